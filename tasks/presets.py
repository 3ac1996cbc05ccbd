"""Pipeline presets: what each named job prepares, trains, evaluates and samples, as typed,
frozen values shared by the flows and the tasks.

A `Pipeline` holds the library's own types: two `DatasetSpec`s, a `TrainPart` (a training
preset plus overrides, validated into a `TrainConfig` once the data directory is known), an
`EvalSpec` and a `SampleSetPart`; evaluation and the sample set share one `SamplerSpec`. A score
variant (`model="ncsn"`) replaces the training part and the sampler. `resolve` applies the
flows' flat parameters.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from diffusion_lib.data import DatasetSpec
from diffusion_lib.evaluation import EvalSpec
from diffusion_lib.sample_sets import CHUNK_ROWS, ROWS_PER_SHARD
from diffusion_lib.samplers import SAMPLERS, SamplerSpec
from diffusion_lib.training import TrainConfig, config_preset
from diffusion_lib.training.objectives import OBJECTIVES


@dataclasses.dataclass(frozen=True)
class TrainPart:
    """A training preset (`config_preset` name) and the fields it overrides."""

    preset: str
    overrides: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def of(cls, preset: str, **overrides) -> TrainPart:
        part = cls(preset, tuple(sorted(overrides.items())))
        part.config("unused")  # every field checked now, not when a job starts
        return part

    def config(self, data_dir: str) -> TrainConfig:
        return config_preset(self.preset, data_dir=data_dir, **dict(self.overrides))

    def replace(self, **changes) -> TrainPart:
        """These overrides changed (None: back to the preset's value)."""
        merged = {**dict(self.overrides), **changes}
        return TrainPart.of(self.preset, **{k: v for k, v in merged.items() if v is not None})


@dataclasses.dataclass(frozen=True)
class SampleSetPart:
    """The sample set a job writes: n samples by `sampler`, in shards of `rows_per_shard`, drawn
    in chunks of `chunk_rows` (chunk i from seed [seed, i])."""

    n: int
    sampler: SamplerSpec
    rows_per_shard: int = ROWS_PER_SHARD
    chunk_rows: int = CHUNK_ROWS
    seed: int = 0

    def options(self) -> dict[str, Any]:
        """Keywords of `sample_set_spec`."""
        return dataclasses.asdict(self) | {"sampler": self.sampler}


@dataclasses.dataclass(frozen=True)
class InpaintPart:
    """How the `inpaint` flow fills in a job's held-out examples: its sampler (None: the sample
    set's, without guidance) and method (RePaint's `resamplings` and `jump_length`, the weight
    of reconstruction guidance)."""

    sampler: SamplerSpec | None = None
    resamplings: int = 1
    jump_length: int = 10
    reconstruction: float = 0.0


@dataclasses.dataclass(frozen=True)
class Pipeline:
    train_data: DatasetSpec
    test_data: DatasetSpec
    train: TrainPart
    eval: EvalSpec
    samples: SampleSetPart
    inpaint: InpaintPart = InpaintPart()

    def with_sampler(self, sampler: SamplerSpec) -> Pipeline:
        """Evaluation and the sample set both drawn by `sampler`."""
        return dataclasses.replace(
            self,
            eval=dataclasses.replace(self.eval, sampler=sampler),
            samples=dataclasses.replace(self.samples, sampler=sampler),
        )

    def with_settings(self, part: str, **changes) -> Pipeline:
        """One part with fields changed: training overrides, or for `eval` and `samples` their
        own fields and, for any other name, a setting of their sampler."""
        if part == "train":
            return dataclasses.replace(self, train=self.train.replace(**changes))
        if part not in ("eval", "samples"):
            raise ValueError(f"part must be train, eval or samples, got {part!r}")
        value = getattr(self, part)
        names = {f.name for f in dataclasses.fields(value)}
        own = {k: v for k, v in changes.items() if k in names}
        sampler = own.pop("sampler", value.sampler)
        sampler = sampler if isinstance(sampler, SamplerSpec) else SamplerSpec.of(sampler)
        settings = {k: v for k, v in changes.items() if k not in names}
        return dataclasses.replace(
            self, **{part: dataclasses.replace(value, sampler=sampler.replace(**settings), **own)}
        )


@dataclasses.dataclass(frozen=True)
class ModelVariant:
    """What changes when a preset runs another model than its DDPM (NCSN, a score SDE): the
    training part, the sampler (for evaluation and samples alike) and, optionally, the number
    of samples."""

    train: TrainPart
    sampler: SamplerSpec
    samples_n: int | None = None
    inpaint: InpaintPart = InpaintPart()

    def apply(self, base: Pipeline) -> Pipeline:
        changed = dataclasses.replace(base, train=self.train, inpaint=self.inpaint)
        changed = changed.with_sampler(self.sampler)
        if self.samples_n is None:
            return changed
        return dataclasses.replace(
            changed, samples=dataclasses.replace(changed.samples, n=self.samples_n)
        )


def _data(source: str, split: str, rows_per_shard: int = 10_000, **options) -> DatasetSpec:
    return DatasetSpec.create(source, split, rows_per_shard=rows_per_shard, **options)


def _tfds(name: str, train: TrainPart, sampler: SamplerSpec) -> Pipeline:
    """A TFDS image set. Read from the TFDS data dir (TFDS_DATA_DIR or ~/tensorflow_datasets):
    nothing is downloaded at run time; prepare it once with `tfds build <name>`."""
    return Pipeline(
        _data("tfds", "train", name=name),
        _data("tfds", "test", name=name),
        train,
        EvalSpec(n=10_000, sampler=sampler, bpd_examples=0),
        SampleSetPart(n=50_000, sampler=sampler),
    )


def _toy_budget(steps: int, checkpoints: int) -> dict[str, Any]:
    """The 2-D jobs' training, the same for every model family: mlp-small, batch 512, 3e-3
    after 100 warm-up steps, then a cosine down to a tenth of it at `steps` (and that tenth
    after, should a run be extended), `checkpoints` checkpoints evenly spaced. Shorter runs of smaller batches
    at a constant rate draw a disc of the roll's spread instead of its spiral; every family
    reaches its floors' precision and recall with this one (docs/benchmarks.md)."""
    return {
        "network": "mlp-small",
        "batch_size": 512,
        "learning_rate": 3e-3,
        "warmup_steps": 100,
        "lr_schedule": "cosine",
        "decay_steps": steps,
        "final_lr_fraction": 0.1,
        "num_steps": steps,
        "checkpoint_every": steps // checkpoints,
        "log_every": steps // 12,
    }


_TINY_BUDGET = _toy_budget(3_000, checkpoints=2)
_ROLL_BUDGET = _toy_budget(6_000, checkpoints=3)
# The 2-D samplers: DDPM's own ancestral chain (100 steps; DDIM with 10 lost the roll's thin
# arms), NCSN's annealed Langevin with 10 steps on each of its 10 levels (step_lr by NCSNv2's
# technique 4), the VP SDE's ancestral chain over all its 1,000 levels (on swiss-roll k-NN
# precision 0.97-0.98x its floor; 100 levels, DPM-Solver++ and the adaptive ODE solver all
# stopped at 0.95-0.96x on the same checkpoint), the VE SDE's DPM-Solver++ in 20 calls.
_TOY_DDPM = SamplerSpec.of("ddpm")
_TOY_NCSN = SamplerSpec.of("annealed_langevin", steps_per_level=10, step_lr=4.8e-4)
_TOY_SDE = {"vp": SamplerSpec.of("sde_ancestral"), "ve": SamplerSpec.of("dpm_solver_pp")}
# mnist-cpu's training budget: unet-cpu, batch 64, 1,900 steps at a constant 2e-3 after 100
# warm-up steps (chosen for DDPM, see the preset below); the score-SDE variants train on it.
_MNIST_CPU_BUDGET = {
    "network": "unet-cpu",
    "batch_size": 64,
    "num_steps": 1_900,
    "checkpoint_every": 600,
    "log_every": 50,
    "warmup_steps": 100,
    "learning_rate": 2e-3,
}
# DDPM's and NCSN's: the same, class-conditional on the digits, 1,600 steps in precision="auto"
# (see each preset below).
_MNIST_CPU_CONDITIONAL = {
    **_MNIST_CPU_BUDGET,
    "num_steps": 1_600,
    "precision": "auto",
    "num_classes": 10,
}
# Stochastic DDIM (eta 1) with 100 steps: on these short runs the stochastic samplers score
# well ahead of the deterministic ones at equal network calls (docs/samplers.md).
_DDIM_100_ETA_1 = SamplerSpec.of("ddim", num_steps=100, eta=1.0)

PRESETS: dict[str, Pipeline] = {
    # The fast end-to-end check: 3,000 steps on 2,000 points of the roll, scored on 300.
    "tiny": Pipeline(
        _data("swiss_roll", "train", rows_per_shard=1_000, n=2_000),
        _data("swiss_roll", "test", rows_per_shard=1_000, n=1_000),
        TrainPart.of("toy-ddpm", **_TINY_BUDGET),
        EvalSpec(n=300, sampler=_TOY_DDPM),
        SampleSetPart(n=600, sampler=_TOY_DDPM, rows_per_shard=300, chunk_rows=300),
    ),
    "swiss-roll": Pipeline(
        _data("swiss_roll", "train", n=50_000),
        _data("swiss_roll", "test", n=5_000),
        TrainPart.of("toy-ddpm", **_ROLL_BUDGET),
        EvalSpec(n=2_000, sampler=_TOY_DDPM),
        SampleSetPart(n=10_000, sampler=_TOY_DDPM),
    ),
    "mnist-cpu": Pipeline(
        _data("mnist_embedded", "train"),
        _data("mnist_embedded", "test"),
        # Chosen by benchmarks/sample_quality.py and sampler_settings.py: lr 2e-3 constant
        # after warm-up, 1,600 steps, class-conditional on the digits' labels (10% dropped, so
        # guidance stays possible) and drawn one class a row in turn without guidance, which
        # scores well above the unconditional network at the same cost.
        TrainPart.of("mnist-ddpm", **_MNIST_CPU_CONDITIONAL),
        # The last checkpoint is the one worth scoring. The sample set is the evaluation's draw
        # (the same sampler, seed and one chunk of 400), so it costs nothing more.
        EvalSpec(n=400, sampler=_DDIM_100_ETA_1, bpd_examples=0, newest=1),
        SampleSetPart(n=400, sampler=_DDIM_100_ETA_1, rows_per_shard=400, chunk_rows=400),
    ),
    # GPU-sized jobs: DDPM's settings (Ho et al. 2020, appendix B) for CIFAR-10, a unet-small
    # sized for 28x28 greyscale sets.
    **{
        name: _tfds(
            source,
            TrainPart.of("mnist-ddpm", num_steps=50_000, checkpoint_every=5_000),
            SamplerSpec.of("ddim", num_steps=50),
        )
        for name, source in (("mnist", "mnist"), ("fashion-mnist", "fashion_mnist"))
    },
    "cifar10": _tfds(
        "cifar10",
        TrainPart.of("cifar10-ddpm", checkpoint_every=10_000, log_every=100),
        SamplerSpec.of("ddim", num_steps=100),
    ),
}

# NCSNv2's 232 levels and 5 steps per level, step_lr 6.2e-6 (its CIFAR-10 setting).
_NCSN_GPU = SamplerSpec.of("annealed_langevin", steps_per_level=5, step_lr=6.2e-6)
# The score-based alternative (NCSN + annealed Langevin dynamics) of a preset: what changes
# when a flow is run with model="ncsn". Presets without an entry have no score variant.
SCORE_VARIANTS: dict[str, ModelVariant] = {
    # toy-ncsn: 10 levels from 5 to 0.05 (gamma = 1.67).
    "tiny": ModelVariant(TrainPart.of("toy-ncsn", **_TINY_BUDGET), _TOY_NCSN),
    "swiss-roll": ModelVariant(TrainPart.of("toy-ncsn", **_ROLL_BUDGET), _TOY_NCSN),
    # DDPM's network, batch, learning rate and steps on 100 noise levels from 50 to 0.2, sampled
    # by ancestral sampling (one network call a level, like DDPM's 100-step DDIM, so the sample
    # set is again the evaluation's draw), class-conditional like DDPM's, with guidance w = 0.35
    # at the 54 levels from sigma 10 down to 0.5 (twice the network calls there). The floor of
    # 0.2: lower levels, where denoising a digit is nearly trivial, would take a fifth of
    # training's draws away from the levels that shape the digits, and score worse.
    "mnist-cpu": ModelVariant(
        TrainPart.of("mnist-ncsn", num_levels=100, sigma_min=0.2, **_MNIST_CPU_CONDITIONAL),
        SamplerSpec.of(
            "ve_ancestral", guidance=0.35, guidance_sigma_min=0.5, guidance_sigma_max=10.0
        ),
    ),
    **{
        name: ModelVariant(
            TrainPart.of("mnist-ncsn", num_steps=50_000, checkpoint_every=5_000), _NCSN_GPU
        )
        for name in ("mnist", "fashion-mnist")
    },
}
_SDE_ANCESTRAL_100 = SamplerSpec.of("sde_ancestral", num_steps=100)
# The score-SDE variants (objective "sde"): DDPM's (VP) or NCSN's (VE) network, batch, learning
# rate and steps in continuous time. mnist-cpu: the ancestral predictor on 100 of the SDE's
# 1,000 levels, at the cost of DDPM's sampler there (deterministic samplers such as
# DPM-Solver++ trail the stochastic ones on these short runs, as DDIM at eta 0 does).
SDE_VARIANTS: dict[str, dict[str, ModelVariant]] = {
    kind: {
        "tiny": ModelVariant(TrainPart.of(f"toy-sde-{kind}", **_TINY_BUDGET), _TOY_SDE[kind]),
        "swiss-roll": ModelVariant(TrainPart.of(f"toy-sde-{kind}", **_ROLL_BUDGET), _TOY_SDE[kind]),
        "mnist-cpu": ModelVariant(
            TrainPart.of(
                f"mnist-sde-{kind}",
                **({"sigma_min": 0.05} if kind == "ve" else {}),
                **_MNIST_CPU_BUDGET,
            ),
            _SDE_ANCESTRAL_100,
        ),
    }
    for kind in ("vp", "ve")
}
# EDM (objective "edm"): the preconditioned denoiser, unconditional, sampled by Heun's method
# in 18 steps (35 network calls) with churn, on each preset's network and batch. mnist-cpu: the
# main job, 3,000 steps of its budget (within 10 minutes on 2 cores), training noise ln sigma ~
# N(0, 1.4^2) instead of EDM's N(-1.2, 1.2^2): on these short runs the higher levels, where
# the digits take shape, need the draws (benchmarks/sample_quality.py's edm-* rows); in
# precision "auto", mixed bfloat16 on CPUs with bfloat16 units, where it trains faster than
# float32 at the same FID (benchmarks/sample_quality.py's edm-float32 row beside the main job's).
_HEUN_35_CHURN = SamplerSpec.of(
    "heun", num_steps=18, s_churn=40.0, s_min=0.05, s_max=50.0, s_noise=1.003
)
_TOY_HEUN = SamplerSpec.of("heun", num_steps=18)
EDM_VARIANTS: dict[str, ModelVariant] = {
    "tiny": ModelVariant(TrainPart.of("toy-edm", **_TINY_BUDGET), _TOY_HEUN),
    "swiss-roll": ModelVariant(TrainPart.of("toy-edm", **_ROLL_BUDGET), _TOY_HEUN),
    "mnist-cpu": ModelVariant(
        TrainPart.of(
            "mnist-edm",
            **{**_MNIST_CPU_BUDGET, "num_steps": 3_000},
            precision="auto",
            noise_log_mean=0.0,
            noise_log_std=1.4,
        ),
        _HEUN_35_CHURN,
        # Filling in: Heun in 100 steps with churn, reconstruction guidance of weight 30 and 2
        # resamplings: of the methods benchmarks/inpainting.py compares (docs/inpainting.md's
        # 500-digit table), the one the classifier recognises most often with the top half
        # given, within the stage's 3-minute budget for 100 digits x 4 completions.
        inpaint=InpaintPart(
            _HEUN_35_CHURN.replace(num_steps=100), resamplings=2, reconstruction=30.0
        ),
    ),
    **{
        name: ModelVariant(
            TrainPart.of("mnist-edm", num_steps=50_000, checkpoint_every=5_000), _HEUN_35_CHURN
        )
        for name in ("mnist", "fashion-mnist")
    },
    "cifar10": ModelVariant(
        TrainPart.of("cifar10-ddpm", objective="edm", checkpoint_every=10_000, log_every=100),
        SamplerSpec.of("heun", num_steps=18),
    ),
}
# What a flow's `model` changes: its preset's variant (none for ddpm, the presets' own).
MODEL_VARIANTS: dict[str, dict[str, ModelVariant]] = {
    "ncsn": SCORE_VARIANTS,
    "sde-vp": SDE_VARIANTS["vp"],
    "sde-ve": SDE_VARIANTS["ve"],
    "edm": EDM_VARIANTS,
}
# The model every preset is written for (PRESETS); MODEL_VARIANTS change it into the others.
BASE_MODEL = "ddpm"
MODELS = (BASE_MODEL, *MODEL_VARIANTS)
# The model a preset trains when a flow names none: the main job models p(x) itself, without
# labels, with EDM (its class-conditional DDPM is `model="ddpm"`); the other presets their DDPM.
DEFAULT_MODELS = {"mnist-cpu": "edm"}


def default_model(preset: str) -> str:
    """The model `preset` trains when a flow names none."""
    return DEFAULT_MODELS.get(preset, BASE_MODEL)


# The training objective of each model.
OBJECTIVE_OF = {
    BASE_MODEL: PRESETS["mnist-cpu"].train.config("unused").objective,
    **{
        model: next(iter(variants.values())).train.config("unused").objective
        for model, variants in MODEL_VARIANTS.items()
    },
}


def _serves(objective: type, family: str) -> bool:
    """Whether samplers of `family` can sample a network trained with `objective`: its own
    family, and the score-SDE samplers for objectives that discretise an SDE (`sde_view`)."""
    return family == objective.family or (family == "sde" and hasattr(objective, "sde_view"))


# The samplers that can sample each model.
SAMPLERS_OF = {
    model: tuple(
        name
        for name, info in SAMPLERS.items()
        if _serves(OBJECTIVES[OBJECTIVE_OF[model]], info.family)
    )
    for model in MODELS
}


def resolve(
    preset: str,
    model: str | None = None,
    *,
    steps: int | None = None,
    batch_size: int | None = None,
    num_samples: int | None = None,
    sampler: str | None = None,
    guidance: float | None = None,
    guidance_sigma_min: float | None = None,
    guidance_sigma_max: float | None = None,
) -> Pipeline:
    """The preset (its `model` variant; None: the preset's `default_model`) with the flow's flat
    overrides applied (None: keep).
    `sampler`, `guidance` and the interval of noise levels it is limited to
    (`guidance_sigma_min`, `guidance_sigma_max`) change the sample set's (and the GIF's)
    sampler, not the evaluation's."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    model = default_model(preset) if model is None else model
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    plan = PRESETS[preset]
    if model != BASE_MODEL:
        variants = MODEL_VARIANTS[model]
        if preset not in variants:
            raise ValueError(
                f"model: preset {preset!r} has no {model} variant; those that do: "
                f"{sorted(variants)}"
            )
        plan = variants[preset].apply(plan)
    if sampler is not None and sampler not in SAMPLERS_OF[model]:
        raise ValueError(
            f"sampler: {sampler!r} cannot sample a {model} model; use one of {SAMPLERS_OF[model]}"
        )
    if steps is not None:
        every = min(plan.train.config("unused").run.checkpoint_every, steps)
        plan = plan.with_settings("train", num_steps=steps, checkpoint_every=every)
    if batch_size is not None:
        plan = plan.with_settings("train", batch_size=batch_size)
    if num_samples is not None:
        plan = plan.with_settings("samples", n=num_samples)
    if sampler is not None and sampler != plan.samples.sampler.name:
        plan = plan.with_settings("samples", sampler=SamplerSpec.of(sampler))
    if guidance is not None:
        if not plan.train.config("unused").network.num_classes:
            raise ValueError(
                f"guidance: preset {preset!r} trains an unconditional {model} model; guidance "
                "needs a class-conditional one (num_classes > 0)"
            )
        plan = plan.with_settings("samples", guidance=guidance)
    bounds = {
        name: value
        for name, value in (
            ("guidance_sigma_min", guidance_sigma_min),
            ("guidance_sigma_max", guidance_sigma_max),
        )
        if value is not None
    }
    if bounds:  # the spec checks them, and refuses them by name where nothing is guided
        plan = plan.with_settings("samples", **bounds)
    return plan
