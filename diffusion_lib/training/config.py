"""The training configuration: one flat, typed, frozen record, with named presets.

Flat on purpose: it is also the Prefect flow's parameter set, and a flat model can be
overridden field by field from the command line or the UI (a nested one is replaced whole).
`identity()` names the fields that define what is being trained; the others (how long, how
often to save, on which devices) may change when a run is resumed.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import math
from typing import Any

from diffusion_lib.diffusion import LossType, LossWeighting, ModelMeanType, ModelVarType
from diffusion_lib.networks.config import INPUT_SCALINGS, OUTPUT_SCALINGS, PRECISIONS
from diffusion_lib.schedules import LEVEL_SAMPLINGS
from diffusion_lib.score_matching import PROJECTIONS
from diffusion_lib.sde import SDES
from diffusion_lib.training.objectives import OBJECTIVES

OPTIMIZERS = ("adam", "adamw")
STRATEGIES = ("auto", "default", "mirrored", "multi_worker")
LR_SCHEDULES = ("constant", "cosine", "cooldown")

# Fields that may differ between a run and its resumption.
RESUMABLE_FIELDS = frozenset(
    {
        "num_steps",
        "checkpoint_every",
        "keep_last",
        "keep_every",
        "log_every",
        "strategy",
        "devices",
        "deterministic",
        "data_dir",
        "jit_compile",
    }
)


def _values(choices: type[enum.Enum]) -> tuple[str, ...]:
    return tuple(member.value for member in choices)


# The fields that decide the shapes of a run's weights: a warm start needs them equal.
ARCHITECTURE_FIELDS = (
    "network",
    "network_overrides",
    "objective",
    "num_timesteps",
    "num_levels",
    "var_type",
    "score_output_scaling",
    "score_input_scaling",
    "num_classes",
)


def init_from_parts(text: str) -> tuple[str, int] | None:
    """ "RUN_DIR@STEP" -> (RUN_DIR, STEP), or None if it is not of that form."""
    run_dir, _, step = text.rpartition("@")
    return (run_dir, int(step)) if run_dir and step.isdigit() else None


class ConfigError(ValueError):
    """A configuration with impossible values; the message names the field."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    data_dir: str = ""
    network: str = "unet-small"
    network_overrides: tuple[tuple[str, Any], ...] = ()
    objective: str = "ddpm"
    # DDPM (objective "ddpm")
    schedule: str = "linear"
    num_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    mean_type: str = "eps"
    var_type: str = "fixed_small"
    loss_type: str = "simple"
    loss_weighting: str = "none"  # or "min_snr" (Hang et al. 2023), gamma min_snr_gamma
    min_snr_gamma: float = 5.0
    antithetic: bool = False
    # Score models (objectives "ncsn", "dsm", "ssm")
    sigma_max: float = 1.0
    sigma_min: float = 0.01
    num_levels: int = 10
    sigma: float = 0.1
    num_projections: int = 1
    projection: str = "gaussian"
    variance_reduction: bool = True
    score_output_scaling: str = "none"
    score_input_scaling: str = "none"
    # Which noise levels training draws (objectives "ddpm" and "ncsn"; `schedules.
    # level_log_probs`): "uniform" over the timesteps / levels, or "log_normal": log sigma close
    # to N(noise_log_mean, noise_log_std^2) (EDM's p_train), sigma being a level's noise std in
    # model units (a DDPM timestep's sqrt((1 - abar_t) / abar_t)). Measured on mnist-cpu's
    # 1,900-step jobs with EDM's -1.2 / 1.2, it is far worse there (DDPM FID 12.7 against 6.04,
    # NCSN 44.5 against 11.2): both draw 2% of their levels above sigma 3.4 (DDPM: t > 500),
    # where the samplers spend 39-50% of their steps, and a short run does not learn that
    # range from so few draws.
    noise_sampling: str = "uniform"
    noise_log_mean: float = -1.2
    noise_log_std: float = 1.2
    # objective="sde": the continuous-time SDE (`diffusion_lib.sde`: "vp", "subvp" or "ve"),
    # trained by denoising score matching at t ~ U(sde_eps, 1). VP and sub-VP use beta_min /
    # beta_max, VE sigma_min / sigma_max; num_timesteps is the length of its discrete chain
    # (for the ancestral and reverse-diffusion samplers). likelihood_weighting weights each t by
    # g(t)^2 instead of std(t)^2 (Song et al. 2021b: the loss then bounds the NLL).
    sde: str = "vp"
    beta_min: float = 0.1
    beta_max: float = 20.0
    sde_eps: float = 1e-5
    likelihood_weighting: bool = False
    # Class-conditional training (objectives "ddpm", "ncsn", "sde"): num_classes K > 0 feeds the
    # network the data's labels 0..K-1, each replaced by the null label K with probability
    # label_dropout, so that one network learns the conditional and the unconditional model and
    # samplers can apply classifier-free guidance (Ho & Salimans 2022; the sampler spec's
    # `guidance`). 0: unconditional, labels unused.
    num_classes: int = 0
    label_dropout: float = 0.1
    # Optimisation
    optimizer: str = "adam"
    learning_rate: float = 2e-4
    warmup_steps: int = 0
    # "constant" after warm-up; "cosine": down to final_lr_fraction * learning_rate at
    # decay_steps (a step count of its own, not num_steps, so extending a run on resume does not
    # rewrite the schedule of the steps already taken); "cooldown" (warmup-stable-decay):
    # constant, then linear down to final_lr_fraction * learning_rate over the last
    # cooldown_steps before decay_steps.
    lr_schedule: str = "constant"
    decay_steps: int = 0
    final_lr_fraction: float = 0.0
    cooldown_steps: int = 0
    weight_decay: float = 0.0
    beta_1: float = 0.9
    beta_2: float = 0.999
    grad_clip_norm: float = 1.0
    ema_decay: float = 0.9999
    # min(ema_decay, (1 + step) / (10 + step)): without it a 0.999 average after 1,500 steps
    # still holds 22% of the initial weights (measured: samples were noise).
    ema_warmup: bool = True
    # Warm start: "RUN_DIR@STEP" initialises a new run (no checkpoint of its own yet) with the
    # EMA weights of that run's checkpoint, for both the trained and the averaged weights; the
    # optimizer and the step start fresh. "" starts from the seeded initialisation.
    init_from: str = ""
    batch_size: int = 128
    num_steps: int = 10_000
    seed: int = 0
    flip: bool = False
    shuffle_window: int = 16
    # Checkpoints and reports
    checkpoint_every: int = 1_000
    keep_last: int = 3
    keep_every: int = 0
    log_every: int = 100
    # Execution
    precision: str = "float32"
    jit_compile: bool = False
    strategy: str = "auto"
    devices: tuple[str, ...] = ()
    deterministic: bool = False

    def __post_init__(self):
        object.__setattr__(self, "devices", tuple(self.devices))
        overrides = dict(self.network_overrides)
        frozen = tuple(
            sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in overrides.items())
        )
        object.__setattr__(self, "network_overrides", frozen)
        self.validate()

    def validate(self) -> None:
        def fail(field, message):
            raise ConfigError(f"{field}: {message}")

        def positive(field, allow_zero=False):
            value = getattr(self, field)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or value < 0
                or (value == 0 and not allow_zero)
            ):
                fail(
                    field, f"must be {'non-negative' if allow_zero else 'positive'}, got {value!r}"
                )

        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            if spec.type == "int" and (isinstance(value, bool) or not isinstance(value, int)):
                fail(spec.name, f"must be an integer, got {value!r}")
            if spec.type == "float" and (
                isinstance(value, bool) or not isinstance(value, int | float)
            ):
                fail(spec.name, f"must be a number, got {value!r}")
            if spec.type == "float" and not math.isfinite(value):
                # NaN compares false with everything, so range checks below would let it pass
                # (grad_clip_norm=NaN used to turn clipping off silently).
                fail(spec.name, f"must be finite, got {value!r}")
            if spec.type == "bool" and not isinstance(value, bool):
                fail(spec.name, f"must be true or false, got {value!r}")
            if spec.type == "str" and not isinstance(value, str):
                fail(spec.name, f"must be a string, got {value!r}")

        choices = {
            "objective": tuple(OBJECTIVES),
            "optimizer": OPTIMIZERS,
            "strategy": STRATEGIES,
            "precision": PRECISIONS,
            "lr_schedule": LR_SCHEDULES,
            "mean_type": _values(ModelMeanType),
            "var_type": _values(ModelVarType),
            "loss_type": _values(LossType),
            "loss_weighting": _values(LossWeighting),
            "projection": PROJECTIONS,
            "score_output_scaling": OUTPUT_SCALINGS,
            "score_input_scaling": INPUT_SCALINGS,
            "sde": tuple(SDES),
            "noise_sampling": LEVEL_SAMPLINGS,
        }
        for field, allowed in choices.items():
            if getattr(self, field) not in allowed:
                fail(field, f"must be one of {allowed}, got {getattr(self, field)!r}")
        for field in (
            "num_timesteps",
            "batch_size",
            "num_steps",
            "checkpoint_every",
            "log_every",
            "keep_last",
            "learning_rate",
            "sigma_max",
            "sigma_min",
            "num_levels",
            "sigma",
            "num_projections",
            "shuffle_window",
            "min_snr_gamma",
            "noise_log_std",
        ):
            positive(field)
        for field in (
            "warmup_steps",
            "weight_decay",
            "grad_clip_norm",
            "keep_every",
            "seed",
            "decay_steps",
            "cooldown_steps",
            "num_classes",
        ):
            positive(field, allow_zero=True)
        if self.lr_schedule == "cosine" and self.decay_steps <= self.warmup_steps:
            fail(
                "decay_steps",
                f"a cosine schedule needs decay_steps > warmup_steps ({self.warmup_steps}), "
                f"got {self.decay_steps}",
            )
        if self.lr_schedule == "cooldown" and not (
            0 < self.cooldown_steps <= self.decay_steps - self.warmup_steps
        ):
            fail(
                "cooldown_steps",
                "a cooldown schedule needs 0 < cooldown_steps <= decay_steps - warmup_steps "
                f"({self.decay_steps} - {self.warmup_steps}), got {self.cooldown_steps}",
            )
        if self.cooldown_steps and self.lr_schedule != "cooldown":
            fail(
                "cooldown_steps",
                f"only the cooldown schedule uses it; lr_schedule is {self.lr_schedule!r}",
            )
        if not 0.0 <= self.label_dropout < 1.0:
            fail("label_dropout", f"must be in [0, 1), got {self.label_dropout}")
        if self.num_classes and self.objective not in ("ddpm", "ncsn", "sde"):
            fail(
                "num_classes",
                f"class-conditional training needs objective 'ddpm', 'ncsn' or 'sde', got "
                f"{self.objective!r}",
            )
        if not 0.0 <= self.final_lr_fraction <= 1.0:
            fail("final_lr_fraction", f"must be in [0, 1], got {self.final_lr_fraction}")
        if self.init_from and init_from_parts(self.init_from) is None:
            fail("init_from", f"must be 'RUN_DIR@STEP' (or empty), got {self.init_from!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            fail("ema_decay", f"must be in [0, 1), got {self.ema_decay}")
        if self.sigma_min > self.sigma_max:
            fail("sigma_min", f"must not exceed sigma_max ({self.sigma_min} > {self.sigma_max})")
        if not 0.0 < self.beta_start <= self.beta_end < 1.0:
            fail(
                "beta_start",
                f"need 0 < beta_start <= beta_end < 1, got {self.beta_start}, {self.beta_end}",
            )
        if self.var_type == "learned_range" and self.loss_type == "simple":
            fail(
                "loss_type",
                "a learned variance needs loss_type 'hybrid' or 'vlb' (the simple loss ignores it)",
            )
        if self.score_output_scaling == "inverse_sigma" and self.objective not in ("ncsn", "dsm"):
            fail(
                "score_output_scaling",
                "'inverse_sigma' needs a noise-conditional objective (ncsn or dsm)",
            )
        if self.score_input_scaling != "none" and self.objective not in ("ncsn", "dsm"):
            fail(
                "score_input_scaling",
                f"{self.score_input_scaling!r} needs a noise-conditional objective (ncsn or dsm)",
            )
        if self.noise_sampling != "uniform":
            if self.objective not in ("ddpm", "ncsn"):
                fail(
                    "noise_sampling",
                    f"{self.noise_sampling!r} needs objective 'ddpm' or 'ncsn' (they draw from "
                    f"discrete levels), got {self.objective!r}",
                )
            if self.antithetic:
                fail(
                    "antithetic",
                    f"mirrors uniform timesteps; noise_sampling is {self.noise_sampling!r}",
                )
        if not 0.0 < self.beta_min < self.beta_max:
            fail("beta_min", f"need 0 < beta_min < beta_max, got {self.beta_min}, {self.beta_max}")
        if not 0.0 < self.sde_eps < 0.5:
            fail("sde_eps", f"must be in (0, 0.5), got {self.sde_eps}")
        for field, beta in (("beta_1", self.beta_1), ("beta_2", self.beta_2)):
            if not 0.0 <= beta < 1.0:
                fail(field, f"must be in [0, 1), got {beta}")

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["network_overrides"] = {
            k: (list(v) if isinstance(v, tuple) else v) for k, v in self.network_overrides
        }
        data["devices"] = list(self.devices)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown config fields {unknown}")
        data = dict(data)
        if isinstance(data.get("network_overrides"), dict):
            data["network_overrides"] = tuple(data["network_overrides"].items())
        return cls(**data)

    def identity(self) -> dict[str, Any]:
        """The fields that decide what is trained (all but RESUMABLE_FIELDS)."""
        return {k: v for k, v in self.to_dict().items() if k not in RESUMABLE_FIELDS}

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:16]


def _presets() -> dict[str, TrainConfig]:
    toy = TrainConfig(
        network="mlp-small",
        batch_size=256,
        learning_rate=1e-3,
        num_timesteps=100,
        beta_end=0.2,
        num_steps=5_000,
        checkpoint_every=1_000,
        log_every=100,
        ema_decay=0.995,
    )
    mnist = TrainConfig(
        network="unet-small",
        batch_size=128,
        learning_rate=2e-4,
        warmup_steps=500,
        num_steps=20_000,
        ema_decay=0.999,
    )
    return {
        "toy-ddpm": toy,
        "toy-ncsn": toy.replace(objective="ncsn", sigma_max=5.0, sigma_min=0.05, num_levels=10),
        "toy-ssm": toy.replace(objective="ssm", variance_reduction=True),
        "mnist-ddpm": mnist,
        "mnist-ddpm-tiny": mnist.replace(
            network="unet-tiny",
            batch_size=32,
            num_steps=200,
            warmup_steps=20,
            checkpoint_every=50,
            log_every=10,
        ),
        # Score SDEs (Song et al. 2021): VP with DDPM's betas (0.1 to 20 over t in [0, 1]), VE
        # with NCSN's noise range.
        "toy-sde-vp": toy.replace(objective="sde", sde="vp", num_timesteps=1000),
        "toy-sde-ve": toy.replace(
            objective="sde", sde="ve", sigma_max=5.0, sigma_min=0.01, num_timesteps=1000
        ),
        "mnist-sde-vp": mnist.replace(objective="sde", sde="vp"),
        "mnist-sde-ve": mnist.replace(objective="sde", sde="ve", sigma_max=50.0, sigma_min=0.01),
        "mnist-ncsn": mnist.replace(
            objective="ncsn",
            sigma_max=50.0,
            sigma_min=0.01,
            num_levels=232,
            score_output_scaling="inverse_sigma",
        ),
        "cifar10-ddpm": TrainConfig(
            network="unet-standard",
            batch_size=128,
            learning_rate=2e-4,
            warmup_steps=5_000,
            num_steps=800_000,
            flip=True,
            ema_decay=0.9999,
        ),
    }


def config_preset(name: str, **overrides) -> TrainConfig:
    presets = _presets()
    if name not in presets:
        raise ConfigError(f"preset must be one of {sorted(presets)}, got {name!r}")
    return presets[name].replace(**overrides)


def config_preset_names() -> list[str]:
    return sorted(_presets())
