"""Samplers: ancestral DDPM, DDIM, Langevin and annealed Langevin dynamics.

Each takes the network as a plain callable (model(x_t, t) or score_fn(x[, sigma])), a stateless
seed, and returns a `SampleResult`; `SAMPLERS` maps names to them. A new sampler is one new
module using `register_sampler`, imported here.
"""

from diffusion_lib.samplers.base import (
    SAMPLERS,
    LevelHealth,
    SampleResult,
    SamplerInfo,
    get_sampler,
    register_sampler,
)
from diffusion_lib.samplers.ddim import ddim_sample, ddim_timesteps
from diffusion_lib.samplers.ddpm import ddpm_sample
from diffusion_lib.samplers.langevin import (
    annealed_langevin_dynamics,
    langevin_dynamics,
    technique4_step_lr,
)

__all__ = [
    "SAMPLERS",
    "LevelHealth",
    "SampleResult",
    "SamplerInfo",
    "annealed_langevin_dynamics",
    "ddim_sample",
    "ddim_timesteps",
    "ddpm_sample",
    "get_sampler",
    "langevin_dynamics",
    "register_sampler",
    "technique4_step_lr",
]
