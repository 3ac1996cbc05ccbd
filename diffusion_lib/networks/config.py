"""Typed network configurations, the family registry and the presets, each defined once.

A preset is a base config plus a few overrides (score_sde's habit); the data shape and the
conditioning are filled in from the dataset and the objective with `dataclasses.replace`.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from collections.abc import Callable

import keras

from diffusion_lib.networks.layers import CONDITIONINGS

FAMILIES: dict[str, Callable[[NetworkConfig], keras.Model]] = {}
OUTPUT_SCALINGS = ("none", "inverse_sigma")
INPUT_SCALINGS = ("none", "unit_variance")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16", "auto")
# CPU flags (/proc/cpuinfo) of bfloat16 matrix arithmetic in hardware.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_bfloat16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU multiplies bfloat16 in hardware, by the flags in `cpuinfo` (default: this
    machine's /proc/cpuinfo; False where there is none). Without such units oneDNN emulates
    bfloat16 and mixed precision is slower than float32, not faster."""
    if cpuinfo is None:
        try:
            cpuinfo = pathlib.Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return any(flag in flags for flag in BF16_CPU_FLAGS)


@functools.cache
def _auto_precision() -> str:
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return "float32"
    return "mixed_bfloat16" if cpu_has_bfloat16() else "float32"


def compute_precision(precision: str) -> str:
    """The Keras dtype policy a network of `precision` computes in. "auto" is mixed bfloat16 on a
    machine without a GPU whose CPU has bfloat16 units, float32 elsewhere: there it trains and samples
    faster than float32 with no loss of quality (docs/benchmarks.md). The weights are float32
    under every policy, so a checkpoint restores under any of them."""
    return _auto_precision() if precision == "auto" else precision


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
    """Everything that decides a network's architecture (and so its checkpoint's layout).

    data_shape: (d,) for points, (H, W, C) for images. conditioning: "timestep" (DDPM),
    "log_sigma" (score models) or "c_noise" (EDM; `layers.CONDITIONINGS`). output_scaling: "inverse_sigma" divides the output by sigma
    (NCSNv2). input_scaling: "unit_variance" feeds a score model x / sqrt(1 + sigma^2), which
    has unit variance at every noise level for standardised data (EDM's c_in; the
    variance-preserving input of a DDPM network), instead of x, whose scale grows with sigma
    up to sigma_max. output_channels_factor: 2 for a DDPM with learned variance. num_classes:
    K > 0 makes the network class-conditional (labels 0..K-1, and K for "no label").
    """

    family: str
    data_shape: tuple[int, ...] = (2,)
    conditioning: str = "timestep"
    output_scaling: str = "none"
    input_scaling: str = "none"
    output_channels_factor: int = 1
    precision: str = "float32"
    num_classes: int = 0
    # MLP
    hidden: int = 128
    depth: int = 3
    embedding_dim: int = 64
    # U-Net
    base_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    attn_resolutions: tuple[int, ...] = (7,)
    dropout: float = 0.0
    norm_groups: int = 8

    def __post_init__(self):
        object.__setattr__(self, "data_shape", tuple(int(v) for v in self.data_shape))
        object.__setattr__(self, "channel_mults", tuple(int(v) for v in self.channel_mults))
        object.__setattr__(self, "attn_resolutions", tuple(int(v) for v in self.attn_resolutions))
        self.validate()

    def to_dict(self) -> dict:
        """JSON-ready fields (tuples as lists): what models and run directories store."""
        return {
            k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()
        }

    def validate(self) -> None:
        def fail(message):
            raise ValueError(f"network config: {message}")

        if self.family not in FAMILIES:
            fail(f"family must be one of {sorted(FAMILIES)}, got {self.family!r}")
        if self.conditioning not in CONDITIONINGS:
            fail(f"conditioning must be one of {CONDITIONINGS}, got {self.conditioning!r}")
        if self.output_scaling not in OUTPUT_SCALINGS:
            fail(f"output_scaling must be one of {OUTPUT_SCALINGS}, got {self.output_scaling!r}")
        if self.output_scaling == "inverse_sigma" and self.conditioning != "log_sigma":
            fail("output_scaling='inverse_sigma' needs conditioning='log_sigma'")
        if self.input_scaling not in INPUT_SCALINGS:
            fail(f"input_scaling must be one of {INPUT_SCALINGS}, got {self.input_scaling!r}")
        if self.input_scaling != "none" and self.conditioning != "log_sigma":
            fail(f"input_scaling={self.input_scaling!r} needs conditioning='log_sigma'")
        if self.output_channels_factor not in (1, 2):
            fail(f"output_channels_factor must be 1 or 2, got {self.output_channels_factor}")
        if self.precision not in PRECISIONS:
            fail(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int):
            fail(f"num_classes must be an integer, got {self.num_classes!r}")
        if self.num_classes < 0:
            fail(f"num_classes must be >= 0 (0: not class-conditional), got {self.num_classes}")
        if any(v <= 0 for v in self.data_shape):
            fail(f"data_shape must be positive, got {self.data_shape}")
        for name in (
            "hidden",
            "depth",
            "embedding_dim",
            "base_channels",
            "num_res_blocks",
            "norm_groups",
        ):
            if getattr(self, name) <= 0:
                fail(f"{name} must be positive, got {getattr(self, name)}")
        if not self.channel_mults or any(m <= 0 for m in self.channel_mults):
            fail(f"channel_mults must be positive, got {self.channel_mults}")
        if not 0.0 <= self.dropout < 1.0:
            fail(f"dropout must be in [0, 1), got {self.dropout}")
        if self.family == "unet" and len(self.data_shape) != 3:
            fail(f"the U-Net needs data_shape (H, W, C), got {self.data_shape}")
        if self.family == "mlp" and len(self.data_shape) != 1:
            fail(f"the MLP needs data_shape (d,), got {self.data_shape}")


def register_family(name: str):
    def add(builder):
        FAMILIES[name] = builder
        return builder

    return add


def _presets() -> dict[str, NetworkConfig]:
    mlp = NetworkConfig(family="mlp", data_shape=(2,))
    unet = NetworkConfig(family="unet", data_shape=(28, 28, 1))
    return {
        "mlp-tiny": dataclasses.replace(mlp, hidden=32, depth=2, embedding_dim=16),
        "mlp-small": mlp,
        "unet-tiny": dataclasses.replace(
            unet, base_channels=8, channel_mults=(1, 2), attn_resolutions=(14,), norm_groups=4
        ),
        # 283k parameters: the widest that trains ~2,000 steps of batch 64 in under 10 minutes
        # on 2 CPU cores (251 images/s for the bare step).
        "unet-cpu": dataclasses.replace(
            unet, base_channels=16, channel_mults=(1, 2, 2), attn_resolutions=(7,), norm_groups=8
        ),
        "unet-small": dataclasses.replace(
            unet, base_channels=32, channel_mults=(1, 2, 2), num_res_blocks=1
        ),
        # DDPM's CIFAR-10 network (35.7M parameters at 32x32x3): for GPUs.
        "unet-standard": dataclasses.replace(
            unet,
            base_channels=128,
            channel_mults=(1, 2, 2, 2),
            num_res_blocks=2,
            attn_resolutions=(16, 14),
            dropout=0.1,
            norm_groups=32,
        ),
    }


def preset(name: str, **overrides) -> NetworkConfig:
    """A preset by name with fields replaced, e.g. preset("unet-small", data_shape=(32, 32, 3))."""
    presets = _presets()
    if name not in presets:
        raise ValueError(f"network preset must be one of {sorted(presets)}, got {name!r}")
    return dataclasses.replace(presets[name], **overrides)


def preset_names() -> list[str]:
    return sorted(_presets())


def build_network(config: NetworkConfig, seed: int = 0) -> keras.Model:
    """The Keras model of `config`, built (its variables exist) and ready to call as model(x, cond).

    Initial weights are a function of (config, seed): see `networks.init`.
    """
    from diffusion_lib.networks.init import initialize

    return initialize(FAMILIES[config.family](config), seed)
