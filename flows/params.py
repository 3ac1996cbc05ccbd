"""The flows' shared parameter types, what each parameter means, and the run-directory rule
(plain Python, no Prefect state).

Parameters are flat and typed so the Prefect UI shows and validates each one, and so
`prefect deployment run ... --param steps=200` changes one field (a nested model passed with
--param would replace all of its fields). `described` writes each parameter's meaning into a
flow's docstring, where the Prefect UI and the generated command lines (flows/cli.py) read it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Annotated, Literal, TypeVar

from pydantic import Field

from diffusion_lib.completions import CHUNK_EXAMPLES
from diffusion_lib.samplers import SAMPLERS
from tasks.presets import BASE_MODEL, DEFAULT_MODELS, MODELS, PRESETS

# The choices come from the registries, so the UI's drop-downs list what exists.
Preset = Literal[tuple(PRESETS)]
Model = Literal[MODELS]
Sampler = Literal[tuple(SAMPLERS)]
Positive = Annotated[int, Field(gt=0)]
Minutes = Annotated[float, Field(gt=0, allow_inf_nan=False)]
# Classifier-free guidance weight w (samplers/spec.py): 0 is the conditional model alone.
Guidance = Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)]
# The noise levels (sigma, counted as a VE process counts it) that guidance is limited to.
Sigma = Annotated[float, Field(ge=0, allow_inf_nan=False)]
RunName = Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
# A weight >= 0 (reconstruction guidance's).
Weight = Annotated[float, Field(ge=0, le=1000, allow_inf_nan=False)]
# Mask specs of diffusion_lib.masks, comma-separated: "top-known,centre-missing".
Masks = Annotated[str, Field(min_length=1, pattern=r"^[^,]+(,[^,]+)*$")]


# What each flow parameter means, once for every flow that takes it.
MEANINGS = {
    "preset": "the named job: its data, training, evaluation and sample set",
    "output_root": "the folder that holds the run directories",
    "run_name": (
        "the run directory under output_root; the same name again resumes that run (left "
        "out: a new directory, <preset>-<flow run name>)"
    ),
    "model": (
        "the model family: ddpm, ncsn (noise-conditional score network), sde-vp or sde-ve "
        "(score SDEs in continuous time), edm (EDM's preconditioned denoiser); left out, the "
        "preset's: "
        + ", ".join(f"{model} for {preset}" for preset, model in DEFAULT_MODELS.items())
        + f", {BASE_MODEL} for the others"
    ),
    "steps": "training steps (default: the preset's)",
    "batch_size": "the global training batch (default: the preset's)",
    "workers": "training worker processes, one replica each; 1 trains in this process's child",
    "timeout_minutes": "the training stage's time limit",
    "warm_start": (
        "start a new run from the best checkpoint of the newest earlier run under output_root "
        "with the same data, network and objective"
    ),
    "step": "the checkpoint to sample (default: the latest)",
    "num_samples": "samples in the sample set (default: the preset's)",
    "sampler": (
        "a sampler the model serves, at its default settings, instead of the preset's (the "
        "sample set and the GIF; for evaluate, the scores, kept in eval/metrics-<sampler>.json; "
        "for inpaint, the completions)"
    ),
    "guidance": (
        "classifier-free guidance weight w of the sample set, for a class-conditional model: "
        "(1 + w) conditional - w unconditional; 0 is the conditional model alone"
    ),
    "guidance_sigma_min": (
        "guide only where the noise level sigma (as a variance-exploding process counts it) "
        "is at least this"
    ),
    "guidance_sigma_max": "guide only where the noise level sigma is at most this",
    "masks": (
        "what is given of each held-out example, comma-separated: top-known, bottom-known, "
        "left-known, right-known, centre-missing, random-missing:P, png:PATH (white given), "
        "coordinate-known:I for points (default: top-known, or coordinate-known:0)"
    ),
    "images": "held-out examples to fill in (the first of the run's test set)",
    "completions": "completions of each example under each mask",
    "resamplings": (
        "RePaint's walks down each block of jump_length steps (1: the replacement method "
        "alone; each more costs as many network calls again; default: the preset's)"
    ),
    "jump_length": (
        "RePaint's block: steps walked down before noising back up (default: the preset's)"
    ),
    "reconstruction": (
        "the weight of reconstruction guidance, which pulls the network's estimate of the "
        "clean example towards the given entries at every step (0: none; one backward pass "
        "through the network a step; DDPM runs' and the score-SDE samplers; default: the "
        "preset's)"
    ),
    "chunk_examples": (
        "examples filled in at once, each with its completions (default: "
        f"{CHUNK_EXAMPLES}); fewer hold less memory, as reconstruction guidance on a large "
        "network on a small GPU needs; another value draws another set"
    ),
}

FlowFunction = TypeVar("FlowFunction", bound=Callable)


def described(fn: FlowFunction) -> FlowFunction:
    """Appends an Args section with the MEANINGS of `fn`'s parameters to its docstring (put it
    under `@flow`). A parameter without a meaning is an error here, at import."""
    if not (fn.__doc__ or "").strip():
        raise TypeError(f"{fn.__name__}: a flow says what it does in its docstring's first line")
    names = list(inspect.signature(fn).parameters)
    missing = [name for name in names if name not in MEANINGS]
    if missing:
        raise TypeError(f"{fn.__name__}: no meaning in flows.params.MEANINGS for {missing}")
    lines = [f"    {name}: {MEANINGS[name]}" for name in names]
    fn.__doc__ = inspect.cleandoc(fn.__doc__) + "\n\nArgs:\n" + "\n".join(lines) + "\n"
    return fn


def default_run_name(preset: str, flow_run_name: str) -> str:
    """ "<preset>-<flow run name>": unique per flow run, so concurrent runs never share a directory."""
    return f"{preset}-{flow_run_name}"
