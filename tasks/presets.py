"""Pipeline presets: what each named job prepares, trains, evaluates and samples.

Plain data, shared by the tasks and the flows; the sampler names and settings come from the
sampler registry. A preset is a base plus a few
overrides; the flow's flat parameters override it further.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from diffusion_lib.evaluation import EvalSpec
from diffusion_lib.samplers import SAMPLERS, SamplerSpec, get_sampler
from diffusion_lib.training.objectives import OBJECTIVES

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "train_data": {
            "source": "swiss_roll",
            "split": "train",
            "options": {"n": 2_000},
            "rows_per_shard": 1_000,
        },
        "test_data": {
            "source": "swiss_roll",
            "split": "test",
            "options": {"n": 1_000},
            "rows_per_shard": 1_000,
        },
        # 600 steps of mlp-small: sliced Wasserstein 1.7x its floor (60 steps of mlp-tiny: 230x,
        # samples spread over -250..100); the training itself takes seconds, start-up dominates.
        "train": {
            "preset": "toy-ddpm",
            "network": "mlp-small",
            "num_steps": 600,
            "checkpoint_every": 300,
            "log_every": 50,
            "batch_size": 128,
        },
        "eval": {"n": 300, "sampler": "ddim", "num_steps": 10},
        "samples": {
            "n": 600,
            "sampler": "ddim",
            "num_steps": 10,
            "rows_per_shard": 300,
            "chunk_rows": 300,
        },
    },
    "swiss-roll": {
        "train_data": {"source": "swiss_roll", "split": "train", "options": {"n": 50_000}},
        "test_data": {"source": "swiss_roll", "split": "test", "options": {"n": 5_000}},
        "train": {
            "preset": "toy-ddpm",
            "num_steps": 5_000,
            "checkpoint_every": 1_000,
            "log_every": 100,
        },
        "eval": {"n": 2_000, "sampler": "ddpm"},
        "samples": {"n": 10_000, "sampler": "ddpm", "rows_per_shard": 5_000},
    },
    "mnist-cpu": {
        "train_data": {"source": "mnist_embedded", "split": "train", "options": {}},
        "test_data": {"source": "mnist_embedded", "split": "test", "options": {}},
        # Chosen by benchmarks/sample_quality.py and sampler_settings.py (benchmarks/README.md):
        # lr 2e-3 over 1e-3 (classifier score 6.42 vs 6.15 at the same sampler), constant after
        # warm-up (a cosine decay was worse: FID 7.3 vs 5.6), 1,800 steps to fit 10 minutes.
        "train": {
            "preset": "mnist-ddpm",
            "network": "unet-cpu",
            "batch_size": 64,
            "num_steps": 1_800,
            "checkpoint_every": 600,
            "log_every": 50,
            "warmup_steps": 100,
            "learning_rate": 2e-3,
        },
        # Stochastic DDIM (eta 1) with 100 steps: FID 11.7 -> 5.6 on the same checkpoint as
        # deterministic DDIM with 20; the last checkpoint is the one worth scoring.
        "eval": {
            "n": 400,
            "sampler": "ddim",
            "num_steps": 100,
            "eta": 1.0,
            "bpd_examples": 0,
            "newest": 1,
        },
        "samples": {
            "n": 256,
            "sampler": "ddim",
            "num_steps": 100,
            "eta": 1.0,
            "rows_per_shard": 256,
        },
    },
}


def _tfds(name: str, train: dict, eval_settings: dict, samples: dict) -> dict[str, Any]:
    """A TFDS image set. Read from the TFDS data dir (TFDS_DATA_DIR or ~/tensorflow_datasets):
    nothing is downloaded at run time; prepare it once with `tfds build <name>`."""
    return {
        "train_data": {"source": "tfds", "split": "train", "options": {"name": name}},
        "test_data": {"source": "tfds", "split": "test", "options": {"name": name}},
        "train": train,
        "eval": eval_settings,
        "samples": samples,
    }


# GPU-sized jobs: DDPM's settings (Ho et al. 2020, appendix B) for CIFAR-10, a unet-small
# sized for 28x28 greyscale sets.
_GREY_TRAIN = {"preset": "mnist-ddpm", "num_steps": 50_000, "checkpoint_every": 5_000}
_GREY_EVAL = {"n": 10_000, "sampler": "ddim", "num_steps": 50, "bpd_examples": 0}
_GREY_SAMPLES = {"n": 50_000, "sampler": "ddim", "num_steps": 50, "rows_per_shard": 5_000}
PRESETS.update(
    {
        "mnist": _tfds("mnist", _GREY_TRAIN, _GREY_EVAL, _GREY_SAMPLES),
        "fashion-mnist": _tfds("fashion_mnist", _GREY_TRAIN, _GREY_EVAL, _GREY_SAMPLES),
        "cifar10": _tfds(
            "cifar10",
            {"preset": "cifar10-ddpm", "checkpoint_every": 10_000, "log_every": 100},
            {"n": 10_000, "sampler": "ddim", "num_steps": 100, "bpd_examples": 0},
            {"n": 50_000, "sampler": "ddim", "num_steps": 100, "rows_per_shard": 5_000},
        ),
    }
)

# The score-based alternative (NCSN + annealed Langevin dynamics) of a preset: what changes
# when a flow is run with model="ncsn". Presets without an entry have no score variant.
SCORE_VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    # toy-ncsn: 10 levels from 5 to 0.05 (gamma = 1.67); step_lr by NCSNv2's technique 4.
    "tiny": {
        "train": {"preset": "toy-ncsn"},
        "eval": {"sampler": "annealed_langevin", "steps_per_level": 10, "step_lr": 4.8e-4},
        "samples": {"sampler": "annealed_langevin", "steps_per_level": 10, "step_lr": 4.8e-4},
    },
    "swiss-roll": {
        "train": {"preset": "toy-ncsn"},
        "eval": {"sampler": "annealed_langevin", "steps_per_level": 100, "step_lr": 8.1e-5},
        "samples": {"sampler": "annealed_langevin", "steps_per_level": 100, "step_lr": 8.1e-5},
    },
    # 100 noise levels from 50 to 0.01, 3 Langevin steps per level (301 network calls a
    # sample with the final denoising step), step_lr by technique 4 (technique4_step_lr). 2
    # steps per level lag (chain RMS 3.3x what it should be, FID 586); 5 give FID 17.6 against
    # 22.8 but do not fit 10 minutes. Fewer training steps and samples than DDPM for the same
    # reason: every sample costs 3x more network calls than DDPM's 100-step DDIM.
    "mnist-cpu": {
        "train": {
            "preset": "mnist-ncsn",
            "num_levels": 100,
            "num_steps": 1_200,
            "checkpoint_every": 600,
            "learning_rate": 1e-3,  # 2e-3 is measured for DDPM only
        },
        "eval": {"sampler": "annealed_langevin", "steps_per_level": 3, "step_lr": 1.35e-5},
        "samples": {
            "n": 128,
            "sampler": "annealed_langevin",
            "steps_per_level": 3,
            "step_lr": 1.35e-5,
        },
    },
}
# GPU sizes: NCSNv2's 232 levels and 5 steps per level, step_lr 6.2e-6 (its CIFAR-10 setting).
_NCSN_GPU = {"sampler": "annealed_langevin", "steps_per_level": 5, "step_lr": 6.2e-6}
SCORE_VARIANTS["mnist"] = SCORE_VARIANTS["fashion-mnist"] = {
    "train": {"preset": "mnist-ncsn", "num_steps": 50_000, "checkpoint_every": 5_000},
    "eval": _NCSN_GPU,
    "samples": _NCSN_GPU,
}
MODELS = ("ddpm", "ncsn")
# The samplers that can sample each model: those of the family its objective declares.
SAMPLERS_OF = {
    model: tuple(name for name, info in SAMPLERS.items() if info.family == OBJECTIVES[model].family)
    for model in MODELS
}
SAMPLE_SET_OPTIONS = ("n", "rows_per_shard", "chunk_rows", "seed", "distribute")


def sampler_spec(settings: dict[str, Any]) -> SamplerSpec:
    """The sampler a preset's `eval` or `samples` part names ("sampler"), with those of its
    settings that this sampler takes (a part may carry another sampler's, unused)."""
    name = settings["sampler"]
    wanted = get_sampler(name).settings
    return SamplerSpec.of(name, **{k: v for k, v in settings.items() if k in wanted})


def _check_keys(part: str, settings: dict[str, Any], allowed) -> None:
    known = set(allowed) | {"sampler"} | {k for info in SAMPLERS.values() for k in info.settings}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ValueError(f"{part} settings: unknown {unknown}; known: {sorted(known)}")


def eval_spec(settings: dict[str, Any]) -> EvalSpec:
    """A preset's `eval` part as the evaluation's EvalSpec."""
    fields = {f.name for f in dataclasses.fields(EvalSpec)} - {"sampler"}
    _check_keys("eval", settings, fields)
    return EvalSpec(
        sampler=sampler_spec(settings), **{k: v for k, v in settings.items() if k in fields}
    )


def sample_set_options(settings: dict[str, Any]) -> dict[str, Any]:
    """A preset's `samples` part as `sample_set_spec` keywords (the sampler as a SamplerSpec)."""
    _check_keys("samples", settings, SAMPLE_SET_OPTIONS)
    return {
        "sampler": sampler_spec(settings),
        **{k: v for k, v in settings.items() if k in SAMPLE_SET_OPTIONS},
    }


def resolve(preset: str, model: str = "ddpm", **overrides) -> dict[str, Any]:
    """The preset (its `model` variant) with the flow's flat overrides applied (None: keep)."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    plan = {k: dict(v) for k, v in PRESETS[preset].items()}
    if model == "ncsn":
        if preset not in SCORE_VARIANTS:
            raise ValueError(
                f"model: preset {preset!r} has no score-based variant; those that do: "
                f"{sorted(SCORE_VARIANTS)}"
            )
        for part, changes in SCORE_VARIANTS[preset].items():
            plan[part] = {**plan[part], **changes}
    wanted = overrides.get("sampler")
    if wanted is not None and wanted not in SAMPLERS_OF[model]:
        raise ValueError(
            f"sampler: {wanted!r} cannot sample a {model} model; use one of {SAMPLERS_OF[model]}"
        )
    if overrides.get("steps") is not None:
        plan["train"]["num_steps"] = overrides["steps"]
        plan["train"]["checkpoint_every"] = min(
            plan["train"]["checkpoint_every"], overrides["steps"]
        )
    if overrides.get("batch_size") is not None:
        plan["train"]["batch_size"] = overrides["batch_size"]
    if overrides.get("num_samples") is not None:
        plan["samples"]["n"] = overrides["num_samples"]
    if overrides.get("sampler") is not None:
        plan["samples"]["sampler"] = overrides["sampler"]
    return plan
