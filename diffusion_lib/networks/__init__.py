"""Networks: a conditional MLP for 2-D data and the DDPM U-Net for images, both called as
model(x, cond, training=False, seed=None) with cond the timestep [B] int or sigma [B] float;
a class-conditional network (num_classes K > 0) also takes labels [B] in [0, K], K (or no
labels) being "unconditional".

    NetworkConfig, preset(name, **overrides), preset_names(), build_network(config)
"""

from diffusion_lib.networks import mlp, unet  # noqa: F401  (registers the families)
from diffusion_lib.networks.config import (
    FAMILIES,
    NetworkConfig,
    build_network,
    preset,
    preset_names,
    register_family,
)
from diffusion_lib.networks.mlp import ConditionalMLP
from diffusion_lib.networks.unet import UNet

__all__ = [
    "FAMILIES",
    "ConditionalMLP",
    "NetworkConfig",
    "UNet",
    "build_network",
    "preset",
    "preset_names",
    "register_family",
]
