"""The training configuration: a small tree of typed, frozen sections, with named presets.

    TrainConfig
      objective   the model family: "ddpm", "ncsn", "dsm", "ssm", "sde" or "edm" (FAMILIES)
      data        DataConfig        the prepared dataset and its augmentation
      network     NetworkSection    the network preset, its overrides, class conditioning
      optim       OptimConfig       optimiser, learning-rate schedule, EMA, batch
      run         RunConfig         length, seed, warm start, checkpoints, logging
      execution   ExecutionConfig   precision, strategy, devices, determinism
      model       the family's own section (DdpmConfig, NcsnConfig, ...)

Each section validates itself and declares which of its fields may change when a run is
resumed (`RESUMABLE`) and which decide the shapes of the weights (`ARCHITECTURE`); the rest of
`identity()` decides what is trained. A new model family is one new section registered with
`@register_family` (and its objective in `objectives.OBJECTIVES`), nothing else here.

Overrides are field by field: `config.replace(learning_rate=1e-3)` (a field's own name, where
only one section of this config has it), `config.replace(**{"optim.learning_rate": 1e-3})`
(dotted, as `--set optim.learning_rate=1e-3` on the worker's command line), or `objective=`,
which starts the new family's section from its defaults.

Stored as {"version": 2, "objective": ..., "data": {...}, ...}. A flat record without a
version (this configuration before it had sections) is read through `from_dict` as version 1:
each field goes to its section, and the fields of other families, which never took effect,
are dropped.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import math
from typing import Any, ClassVar

from diffusion_lib.diffusion import LossType, LossWeighting, ModelMeanType, ModelVarType
from diffusion_lib.networks.config import INPUT_SCALINGS, OUTPUT_SCALINGS, PRECISIONS
from diffusion_lib.schedules import LEVEL_SAMPLINGS
from diffusion_lib.score_matching import PROJECTIONS
from diffusion_lib.sde import SDES

VERSION = 2
OPTIMIZERS = ("adam", "adamw")
STRATEGIES = ("auto", "default", "mirrored", "multi_worker")
ALLREDUCE_DTYPES = ("float32", "bfloat16")
LR_SCHEDULES = ("constant", "cosine", "cooldown")
# A version-1 record's names for what now has a section-local name.
_V1_NAMES = {"network": "network.name", "network_overrides": "network.overrides"}


def _values(choices: type[enum.Enum]) -> tuple[str, ...]:
    return tuple(member.value for member in choices)


def init_from_parts(text: str) -> tuple[str, int] | None:
    """ "RUN_DIR@STEP" -> (RUN_DIR, STEP), or None if it is not of that form."""
    run_dir, _, step = text.rpartition("@")
    return (run_dir, int(step)) if run_dir and step.isdigit() else None


class ConfigError(ValueError):
    """A configuration with impossible values; the message names the field."""


@dataclasses.dataclass(frozen=True)
class Section:
    """A frozen group of settings: its fields' types are checked, then `check()` its ranges.
    `NAME` is where it stands in a TrainConfig; `fail(field, message)` raises a ConfigError
    naming "NAME.field"."""

    NAME: ClassVar[str] = ""
    RESUMABLE: ClassVar[frozenset[str]] = frozenset()
    ARCHITECTURE: ClassVar[frozenset[str]] = frozenset()
    CHOICES: ClassVar[dict[str, tuple]] = {}
    POSITIVE: ClassVar[tuple[str, ...]] = ()
    NON_NEGATIVE: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self):
        for spec in dataclasses.fields(self):
            _check_type(self, spec.name, spec.type, getattr(self, spec.name))
        for field, allowed in self.CHOICES.items():
            if getattr(self, field) not in allowed:
                self.fail(field, f"must be one of {allowed}, got {getattr(self, field)!r}")
        for field in self.POSITIVE:
            if getattr(self, field) <= 0:
                self.fail(field, f"must be positive, got {getattr(self, field)!r}")
        for field in self.NON_NEGATIVE:
            if getattr(self, field) < 0:
                self.fail(field, f"must be non-negative, got {getattr(self, field)!r}")
        self.check()

    def check(self) -> None:
        """Ranges and relations between this section's fields."""

    def fail(self, field: str, message: str):
        raise ConfigError(f"{self.NAME}.{field}: {message}")

    def to_dict(self) -> dict[str, Any]:
        return {spec.name: _plain(getattr(self, spec.name)) for spec in dataclasses.fields(self)}

    def identity(self) -> dict[str, Any]:
        """What of this section decides what is trained: its fields but the RESUMABLE ones."""
        return {k: v for k, v in self.to_dict().items() if k not in self.RESUMABLE}


def _plain(value):
    """JSON-ready: tuples as lists."""
    return [_plain(v) for v in value] if isinstance(value, tuple) else value


def _check_type(section: Section, name: str, kind: str, value) -> None:
    fail = section.fail
    if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
        fail(name, f"must be an integer, got {value!r}")
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            fail(name, f"must be a number, got {value!r}")
        if not math.isfinite(value):
            # NaN compares false with everything, so a range check would let it pass
            # (grad_clip_norm=NaN used to turn clipping off silently).
            fail(name, f"must be finite, got {value!r}")
    if kind == "bool" and not isinstance(value, bool):
        fail(name, f"must be true or false, got {value!r}")
    if kind == "str" and not isinstance(value, str):
        fail(name, f"must be a string, got {value!r}")


def _in_range(section: Section, field: str, low: float, high: float, *, open_high=False):
    value = getattr(section, field)
    if not (low <= value < high if open_high else low <= value <= high):
        section.fail(field, f"must be in [{low}, {high}{')' if open_high else ']'}, got {value}")


@dataclasses.dataclass(frozen=True)
class DataConfig(Section):
    NAME: ClassVar[str] = "data"
    RESUMABLE: ClassVar[frozenset[str]] = frozenset({"data_dir"})
    POSITIVE: ClassVar[tuple[str, ...]] = ("shuffle_window",)

    data_dir: str = ""
    flip: bool = False
    shuffle_window: int = 16


@dataclasses.dataclass(frozen=True)
class NetworkSection(Section):
    """The network preset (`networks.config`) and its overrides. Class-conditional training:
    num_classes K > 0 feeds the network the data's labels 0..K-1, each replaced by the null
    label K with probability label_dropout, so that one network learns the conditional and the
    unconditional model and samplers can apply classifier-free guidance (Ho & Salimans 2022;
    the sampler spec's `guidance`). 0: unconditional, labels unused."""

    NAME: ClassVar[str] = "network"
    ARCHITECTURE: ClassVar[frozenset[str]] = frozenset({"name", "overrides", "num_classes"})
    NON_NEGATIVE: ClassVar[tuple[str, ...]] = ("num_classes",)

    name: str = "unet-small"
    overrides: tuple[tuple[str, Any], ...] = ()
    num_classes: int = 0
    label_dropout: float = 0.1

    def __post_init__(self):
        overrides = dict(self.overrides)
        frozen = tuple(
            sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in overrides.items())
        )
        object.__setattr__(self, "overrides", frozen)
        super().__post_init__()

    def check(self) -> None:
        _in_range(self, "label_dropout", 0.0, 1.0, open_high=True)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "overrides": {k: _plain(v) for k, v in self.overrides}}


@dataclasses.dataclass(frozen=True)
class OptimConfig(Section):
    """Adam(W) with a warm-up, then "constant", or "cosine": down to final_lr_fraction *
    learning_rate at decay_steps (a step count of its own, not num_steps, so extending a run on
    resume does not rewrite the schedule of the steps already taken), or "cooldown"
    (warmup-stable-decay): constant, then linear down to final_lr_fraction * learning_rate over
    the last cooldown_steps before decay_steps. ema_warmup: min(ema_decay, (1 + step) / (10 +
    step)); without it a 0.999 average after 1,500 steps still holds 22% of the initial weights
    (measured: samples were noise)."""

    NAME: ClassVar[str] = "optim"
    CHOICES: ClassVar[dict[str, tuple]] = {"optimizer": OPTIMIZERS, "lr_schedule": LR_SCHEDULES}
    POSITIVE: ClassVar[tuple[str, ...]] = ("learning_rate", "batch_size")
    NON_NEGATIVE: ClassVar[tuple[str, ...]] = (
        "warmup_steps",
        "decay_steps",
        "cooldown_steps",
        "weight_decay",
        "grad_clip_norm",
    )

    optimizer: str = "adam"
    learning_rate: float = 2e-4
    warmup_steps: int = 0
    lr_schedule: str = "constant"
    decay_steps: int = 0
    final_lr_fraction: float = 0.0
    cooldown_steps: int = 0
    weight_decay: float = 0.0
    beta_1: float = 0.9
    beta_2: float = 0.999
    grad_clip_norm: float = 1.0
    ema_decay: float = 0.9999
    ema_warmup: bool = True
    batch_size: int = 128

    def check(self) -> None:
        if self.lr_schedule == "cosine" and self.decay_steps <= self.warmup_steps:
            self.fail(
                "decay_steps",
                f"a cosine schedule needs decay_steps > warmup_steps ({self.warmup_steps}), "
                f"got {self.decay_steps}",
            )
        if self.lr_schedule == "cooldown" and not (
            0 < self.cooldown_steps <= self.decay_steps - self.warmup_steps
        ):
            self.fail(
                "cooldown_steps",
                "a cooldown schedule needs 0 < cooldown_steps <= decay_steps - warmup_steps "
                f"({self.decay_steps} - {self.warmup_steps}), got {self.cooldown_steps}",
            )
        if self.cooldown_steps and self.lr_schedule != "cooldown":
            self.fail(
                "cooldown_steps",
                f"only the cooldown schedule uses it; lr_schedule is {self.lr_schedule!r}",
            )
        _in_range(self, "final_lr_fraction", 0.0, 1.0)
        for field in ("ema_decay", "beta_1", "beta_2"):
            _in_range(self, field, 0.0, 1.0, open_high=True)


@dataclasses.dataclass(frozen=True)
class RunConfig(Section):
    """How long, from where, and how often to save and report. init_from: "RUN_DIR@STEP"
    initialises a new run (no checkpoint of its own yet) with the EMA weights of that run's
    checkpoint, for both the trained and the averaged weights; the optimizer and the step start
    fresh. "" starts from the seeded initialisation."""

    NAME: ClassVar[str] = "run"
    RESUMABLE: ClassVar[frozenset[str]] = frozenset(
        {"num_steps", "checkpoint_every", "keep_last", "keep_every", "log_every"}
    )
    POSITIVE: ClassVar[tuple[str, ...]] = (
        "num_steps",
        "checkpoint_every",
        "log_every",
        "keep_last",
    )
    NON_NEGATIVE: ClassVar[tuple[str, ...]] = ("keep_every", "seed")

    num_steps: int = 10_000
    seed: int = 0
    init_from: str = ""
    checkpoint_every: int = 1_000
    keep_last: int = 3
    keep_every: int = 0
    log_every: int = 100

    def check(self) -> None:
        if self.init_from and init_from_parts(self.init_from) is None:
            self.fail("init_from", f"must be 'RUN_DIR@STEP' (or empty), got {self.init_from!r}")


@dataclasses.dataclass(frozen=True)
class ExecutionConfig(Section):
    NAME: ClassVar[str] = "execution"
    RESUMABLE: ClassVar[frozenset[str]] = frozenset(
        {
            "jit_compile",
            "strategy",
            "devices",
            "deterministic",
            "allreduce_buckets",
            "allreduce_dtype",
        }
    )
    CHOICES: ClassVar[dict[str, tuple]] = {
        "precision": PRECISIONS,
        "strategy": STRATEGIES,
        "allreduce_dtype": ALLREDUCE_DTYPES,
    }
    POSITIVE: ClassVar[tuple[str, ...]] = ("allreduce_buckets",)

    precision: str = "float32"
    jit_compile: bool = False
    strategy: str = "auto"
    devices: tuple[str, ...] = ()
    deterministic: bool = False
    # Over several workers, the gradients are all-reduced in about this many packs, each as
    # soon as the backward pass has produced its gradients, hiding the transfer under the rest
    # of the backward pass (1: one all-reduce after the whole backward pass). Where the
    # backward pass is one XLA cluster (jit_compile) every gradient is ready at its end.
    allreduce_buckets: int = 8
    # What the gradients cross the network as: bfloat16 halves the bytes (each replica's
    # gradient rounded to 8 significant bits before the sum); float32 sums them exactly.
    allreduce_dtype: str = "float32"

    def identity(self) -> dict[str, Any]:
        """A run moves between the precisions that checkpoint the same state when it is resumed:
        float32, mixed bfloat16 and "auto" (one of them) keep float32 weights and optimizer
        state; mixed float16 adds a loss scale to the optimizer's."""
        return {**super().identity(), "precision": checkpoint_layout(self.precision)}

    def __post_init__(self):
        object.__setattr__(self, "devices", tuple(self.devices))
        super().__post_init__()


def checkpoint_layout(precision: str) -> str:
    """What a run of `precision` checkpoints: "loss-scaled" state, or "float32" state only."""
    return "loss-scaled" if precision == "mixed_float16" else "float32"


# The model families: each objective's own settings, a section apiece (`model` in a config).
FAMILIES: dict[str, type[Section]] = {}


def _family(objective: str) -> type[Section]:
    """The section of `objective`'s family; ConfigError naming the field if there is none."""
    if objective not in FAMILIES:
        raise ConfigError(f"objective: must be one of {tuple(FAMILIES)}, got {objective!r}")
    return FAMILIES[objective]


def register_family(objective: str):
    """Registers a family's section under its objective's name."""

    def add(section: type[Section]) -> type[Section]:
        FAMILIES[objective] = section
        return section

    return add


@dataclasses.dataclass(frozen=True)
class FamilyConfig(Section):
    NAME: ClassVar[str] = "model"
    # Whether the family's network can be class-conditional (network.num_classes > 0).
    CONDITIONAL: ClassVar[bool] = False


@dataclasses.dataclass(frozen=True)
class _LevelSampling:
    """Which noise levels training draws (`schedules.level_log_probs`): "uniform" over the
    timesteps / levels, or "log_normal": log sigma close to N(noise_log_mean, noise_log_std^2)
    (EDM's p_train), sigma being a level's noise std in model units (a DDPM timestep's
    sqrt((1 - abar_t) / abar_t)). With EDM's -1.2 / 1.2 it draws few levels above sigma 3.4,
    where the samplers spend much of their steps: short runs do not learn that range without
    EDM's preconditioning and loss weight."""

    noise_sampling: str = "uniform"
    noise_log_mean: float = -1.2
    noise_log_std: float = 1.2


@register_family("ddpm")
@dataclasses.dataclass(frozen=True)
class DdpmConfig(_LevelSampling, FamilyConfig):
    """DDPM (Ho et al. 2020): the beta schedule, what the network predicts, the loss and its
    weighting ("min_snr": Hang et al. 2023, gamma min_snr_gamma)."""

    ARCHITECTURE: ClassVar[frozenset[str]] = frozenset({"num_timesteps", "var_type"})
    CONDITIONAL: ClassVar[bool] = True
    CHOICES: ClassVar[dict[str, tuple]] = {
        "mean_type": _values(ModelMeanType),
        "var_type": _values(ModelVarType),
        "loss_type": _values(LossType),
        "loss_weighting": _values(LossWeighting),
        "noise_sampling": LEVEL_SAMPLINGS,
    }
    POSITIVE: ClassVar[tuple[str, ...]] = ("num_timesteps", "min_snr_gamma", "noise_log_std")

    schedule: str = "linear"
    num_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    mean_type: str = "eps"
    var_type: str = "fixed_small"
    loss_type: str = "simple"
    loss_weighting: str = "none"
    min_snr_gamma: float = 5.0
    antithetic: bool = False

    def check(self) -> None:
        if not 0.0 < self.beta_start <= self.beta_end < 1.0:
            self.fail(
                "beta_start",
                f"need 0 < beta_start <= beta_end < 1, got {self.beta_start}, {self.beta_end}",
            )
        if self.var_type == "learned_range" and self.loss_type == "simple":
            self.fail(
                "loss_type",
                "a learned variance needs loss_type 'hybrid' or 'vlb' (the simple loss ignores it)",
            )
        if self.antithetic and self.noise_sampling != "uniform":
            self.fail(
                "antithetic",
                f"mirrors uniform timesteps; noise_sampling is {self.noise_sampling!r}",
            )


def _sigma_range(section: Section) -> None:
    if section.sigma_min > section.sigma_max:
        section.fail(
            "sigma_min",
            f"must not exceed sigma_max ({section.sigma_min} > {section.sigma_max})",
        )


_SCALINGS = {"score_output_scaling": OUTPUT_SCALINGS, "score_input_scaling": INPUT_SCALINGS}


@register_family("ncsn")
@dataclasses.dataclass(frozen=True)
class NcsnConfig(_LevelSampling, FamilyConfig):
    """NCSN (Song & Ermon 2019): num_levels geometric noise levels from sigma_max down to
    sigma_min; the network's output and input scalings (networks.config.NetworkConfig)."""

    ARCHITECTURE: ClassVar[frozenset[str]] = frozenset(
        {"num_levels", "score_output_scaling", "score_input_scaling"}
    )
    CONDITIONAL: ClassVar[bool] = True
    CHOICES: ClassVar[dict[str, tuple]] = {**_SCALINGS, "noise_sampling": LEVEL_SAMPLINGS}
    POSITIVE: ClassVar[tuple[str, ...]] = ("sigma_max", "sigma_min", "num_levels", "noise_log_std")

    sigma_max: float = 1.0
    sigma_min: float = 0.01
    num_levels: int = 10
    score_output_scaling: str = "none"
    score_input_scaling: str = "none"

    def check(self) -> None:
        _sigma_range(self)


@register_family("dsm")
@dataclasses.dataclass(frozen=True)
class DsmConfig(FamilyConfig):
    """Denoising score matching at one noise level `sigma` (Vincent 2011)."""

    ARCHITECTURE: ClassVar[frozenset[str]] = frozenset(
        {"score_output_scaling", "score_input_scaling"}
    )
    CHOICES: ClassVar[dict[str, tuple]] = _SCALINGS
    POSITIVE: ClassVar[tuple[str, ...]] = ("sigma",)

    sigma: float = 0.1
    score_output_scaling: str = "none"
    score_input_scaling: str = "none"


@register_family("ssm")
@dataclasses.dataclass(frozen=True)
class SsmConfig(FamilyConfig):
    """Sliced score matching (Song et al. 2019) of the data score, the network conditioned on
    the constant sigma_min; num_projections random projections of `projection`'s kind."""

    CHOICES: ClassVar[dict[str, tuple]] = {"projection": PROJECTIONS}
    POSITIVE: ClassVar[tuple[str, ...]] = ("sigma_min", "num_projections")

    sigma_min: float = 0.01
    num_projections: int = 1
    projection: str = "gaussian"
    variance_reduction: bool = True


@register_family("sde")
@dataclasses.dataclass(frozen=True)
class SdeConfig(FamilyConfig):
    """A continuous-time SDE (`diffusion_lib.sde`: "vp", "subvp" or "ve"), trained by denoising
    score matching at t ~ U(sde_eps, 1). VP and sub-VP use beta_min / beta_max, VE sigma_min /
    sigma_max; num_timesteps is the length of its discrete chain (for the ancestral and
    reverse-diffusion samplers). likelihood_weighting weights each t by g(t)^2 instead of
    std(t)^2 (Song et al. 2021b: the loss then bounds the NLL)."""

    ARCHITECTURE: ClassVar[frozenset[str]] = frozenset({"num_timesteps"})
    CONDITIONAL: ClassVar[bool] = True
    CHOICES: ClassVar[dict[str, tuple]] = {"sde": tuple(SDES)}
    POSITIVE: ClassVar[tuple[str, ...]] = ("num_timesteps", "sigma_max", "sigma_min")

    sde: str = "vp"
    beta_min: float = 0.1
    beta_max: float = 20.0
    sigma_min: float = 0.01
    sigma_max: float = 1.0
    sde_eps: float = 1e-5
    likelihood_weighting: bool = False
    num_timesteps: int = 1000

    def check(self) -> None:
        _sigma_range(self)
        if not 0.0 < self.beta_min < self.beta_max:
            self.fail(
                "beta_min", f"need 0 < beta_min < beta_max, got {self.beta_min}, {self.beta_max}"
            )
        if not 0.0 < self.sde_eps < 0.5:
            self.fail("sde_eps", f"must be in (0, 0.5), got {self.sde_eps}")


@register_family("edm")
@dataclasses.dataclass(frozen=True)
class EdmConfig(FamilyConfig):
    """EDM (Karras et al. 2022; `diffusion_lib.edm`): the network preconditioned for data of
    standard deviation sigma_data, trained at ln sigma ~ N(noise_log_mean, noise_log_std^2)
    with the loss weight (sigma^2 + sigma_data^2) / (sigma sigma_data)^2; sampled between
    sigma_max and sigma_min (the range its score-SDE view, a VE SDE, spans)."""

    CONDITIONAL: ClassVar[bool] = True
    POSITIVE: ClassVar[tuple[str, ...]] = ("sigma_data", "noise_log_std", "sigma_min", "sigma_max")

    sigma_data: float = 0.5
    noise_log_mean: float = -1.2
    noise_log_std: float = 1.2
    sigma_min: float = 0.002
    sigma_max: float = 80.0

    def check(self) -> None:
        if self.sigma_min >= self.sigma_max:
            self.fail(
                "sigma_min", f"must be below sigma_max ({self.sigma_min} >= {self.sigma_max})"
            )


_COMMON: dict[str, type[Section]] = {
    "data": DataConfig,
    "network": NetworkSection,
    "optim": OptimConfig,
    "run": RunConfig,
    "execution": ExecutionConfig,
}


def _field_names(section: type[Section]) -> list[str]:
    return [spec.name for spec in dataclasses.fields(section)]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    objective: str = "ddpm"
    data: DataConfig = DataConfig()
    network: NetworkSection = NetworkSection()
    optim: OptimConfig = OptimConfig()
    run: RunConfig = RunConfig()
    execution: ExecutionConfig = ExecutionConfig()
    model: FamilyConfig | None = None  # None: the objective's family at its defaults

    def __post_init__(self):
        family = _family(self.objective)
        if self.model is None:
            object.__setattr__(self, "model", family())
        if type(self.model) is not family:
            raise ConfigError(
                f"model: objective {self.objective!r} takes a {family.__name__}, got "
                f"{type(self.model).__name__}"
            )
        if self.network.num_classes and not family.CONDITIONAL:
            conditional = tuple(name for name, f in FAMILIES.items() if f.CONDITIONAL)
            raise ConfigError(
                f"network.num_classes: class-conditional training needs objective "
                f"{' or '.join(map(repr, conditional))}, got {self.objective!r}"
            )

    def sections(self) -> dict[str, Section]:
        return {name: getattr(self, name) for name in (*_COMMON, "model")}

    # -- overrides -----------------------------------------------------------------------
    def _path(self, key: str, family: type[Section]) -> tuple[str, str]:
        """(section, field) of an override's key: "section.field", or a field's own name where
        one section of this config has it (a version-1 name where it was renamed)."""
        key = _V1_NAMES.get(key, key)
        if "." in key:
            section, _, field = key.partition(".")
            known = _COMMON.get(section) or (family if section == "model" else None)
            if known is None or field not in _field_names(known):
                raise ConfigError(f"{key}: no such setting")
            return section, field
        owners = [name for name, cls in _COMMON.items() if key in _field_names(cls)]
        if key in _field_names(family):
            owners.append("model")
        if not owners:
            other = sorted(name for name, cls in FAMILIES.items() if key in _field_names(cls))
            hint = f" (a setting of objective {' or '.join(other)})" if other else ""
            raise ConfigError(f"{key}: no such setting for objective {self.objective!r}{hint}")
        return owners[0], key

    def replace(self, **changes) -> TrainConfig:
        """This config with `changes` (see the module docstring). `objective` first: a new
        family starts from its defaults."""
        objective = changes.pop("objective", self.objective)
        family = _family(objective)
        values = {name: section.to_dict() for name, section in self.sections().items()}
        if objective != self.objective:
            values["model"] = {}
        for key, value in changes.items():
            if key in values and isinstance(value, Section | dict):  # a whole section
                values[key] = value.to_dict() if isinstance(value, Section) else dict(value)
                continue
            section, field = self._path(key, family)
            values[section][field] = value
        return TrainConfig._build(objective, values)

    @staticmethod
    def _build(objective: str, values: dict[str, dict]) -> TrainConfig:
        sections = {}
        for name, cls in {**_COMMON, "model": _family(objective)}.items():
            fields = dict(values.get(name, {}))
            unknown = sorted(set(fields) - set(_field_names(cls)))
            if unknown:
                raise ConfigError(f"{name}: unknown settings {unknown}")
            if name == "network" and isinstance(fields.get("overrides"), dict):
                fields["overrides"] = tuple(fields["overrides"].items())
            sections[name] = cls(**fields)
        return TrainConfig(objective, **sections)

    @classmethod
    def of(cls, **changes) -> TrainConfig:
        """The default config with `changes` (field names as `replace` takes them)."""
        return cls().replace(**changes)

    # -- stored form ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "objective": self.objective,
            **{name: section.to_dict() for name, section in self.sections().items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """A stored config: version 2, or a version-1 flat record (migrated)."""
        data = dict(data)
        version = data.pop("version", 1)
        if version == 1:
            return _from_v1(data)
        if version != VERSION:
            raise ConfigError(
                f"version: {version} is a newer configuration than this code reads ({VERSION})"
            )
        objective = data.pop("objective", "ddpm")
        unknown = sorted(set(data) - {*_COMMON, "model"})
        if unknown:
            raise ConfigError(f"unknown config sections {unknown}")
        return cls._build(objective, data)

    # -- what a run is -------------------------------------------------------------------
    def identity(self) -> dict[str, Any]:
        """What decides what is trained: every field but the sections' RESUMABLE ones, as each
        section states it (`Section.identity`)."""
        return {
            "objective": self.objective,
            **{name: section.identity() for name, section in self.sections().items()},
        }

    def architecture(self) -> dict[str, Any]:
        """What decides the shapes of the weights: a warm start needs it equal."""
        return {
            "objective": self.objective,
            **{
                name: {k: v for k, v in section.to_dict().items() if k in section.ARCHITECTURE}
                for name, section in self.sections().items()
            },
        }

    def differences(self, other: TrainConfig) -> list[str]:
        """The identity fields ("section.field") in which `other` differs from this config."""
        mine, theirs = self.identity(), other.identity()
        if mine["objective"] != theirs["objective"]:
            return ["objective"]
        return sorted(
            f"{name}.{field}"
            for name in (*_COMMON, "model")
            for field in set(mine[name]) | set(theirs[name])
            if mine[name].get(field) != theirs[name].get(field)
        )

    def fingerprint(self) -> str:
        return _digest(self.identity())

    def matches_fingerprint(self, fingerprint: str) -> bool:
        """Whether checkpoints marked with `fingerprint` were written by a run of this identity:
        its fingerprint, or one written when the precision was part of the identity as given
        (any precision of the same checkpoint layout)."""
        if fingerprint == self.fingerprint():
            return True
        layout = checkpoint_layout(self.execution.precision)
        identity = self.identity()
        return any(
            fingerprint
            == _digest({**identity, "execution": {**identity["execution"], "precision": p}})
            for p in PRECISIONS
            if checkpoint_layout(p) == layout
        )


def _digest(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


# Every name a version-1 record may hold: the sections' fields and the renamed ones.
_V1_FIELDS = (
    {"objective", *_V1_NAMES}
    | {f for cls in _COMMON.values() for f in _field_names(cls)}
    | {f for cls in FAMILIES.values() for f in _field_names(cls)}
) - {"name", "overrides"}


def _from_v1(data: dict[str, Any]) -> TrainConfig:
    """A flat record: each field to its section, as `replace` places a field's own name;
    another family's fields (they had no effect on this objective's run) are dropped."""
    unknown = sorted(set(data) - _V1_FIELDS)
    if unknown:
        raise ConfigError(f"unknown config fields {unknown}")
    own = set(_field_names(_family(data.get("objective", "ddpm"))))
    others = {f for cls in FAMILIES.values() for f in _field_names(cls)} - own
    return TrainConfig.of(**{k: v for k, v in data.items() if k not in others})


def _presets() -> dict[str, TrainConfig]:
    toy = TrainConfig.of(
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
    mnist = TrainConfig.of(
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
        # EDM on standardised points: their standard deviation is 1.
        "toy-edm": toy.replace(objective="edm", sigma_data=1.0),
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
        "mnist-edm": mnist.replace(objective="edm"),
        "mnist-ncsn": mnist.replace(
            objective="ncsn",
            sigma_max=50.0,
            sigma_min=0.01,
            num_levels=232,
            score_output_scaling="inverse_sigma",
        ),
        "cifar10-ddpm": TrainConfig.of(
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


def check_against_data(config: TrainConfig, dataset, replicas: int) -> None:
    """What the config asks of `dataset` (an opened dataset) and of `replicas`: ConfigError
    naming the field."""
    if config.data.flip and dataset.kind != "image":
        raise ConfigError("data.flip: only image datasets can be flipped")
    if config.optim.batch_size > len(dataset):
        raise ConfigError(
            f"optim.batch_size: {config.optim.batch_size} is larger than the {len(dataset)} "
            f"examples of {config.data.data_dir}"
        )
    if config.network.num_classes:
        labels = dataset.label_range()
        if labels is None:
            raise ConfigError(
                f"network.num_classes: {config.data.data_dir} has no labels to condition on (set 0)"
            )
        if labels[0] < 0 or labels[1] >= config.network.num_classes:
            raise ConfigError(
                f"network.num_classes: {config.network.num_classes} classes, but the labels of "
                f"{config.data.data_dir} span {labels[0]}..{labels[1]}"
            )
    if config.optim.batch_size % replicas:
        raise ConfigError(
            f"optim.batch_size: {config.optim.batch_size} is not divisible by {replicas} replicas"
        )
