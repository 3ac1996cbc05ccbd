"""Samplers: ancestral DDPM, DDIM, Langevin and annealed Langevin dynamics, ancestral
sampling of a noise-conditional score model (VE), and the samplers of a score SDE
(predictor-corrector, the probability-flow ODE, DPM-Solver++).

Each takes the network as a plain callable (model(x_t, t) or score_fn(x[, sigma])), a stateless
seed, and returns a `SampleResult`; `SAMPLERS` maps names to them, with each one's family and
settings. `SamplerSpec` is a sampler chosen with its settings, validated. A new sampler is one
new module using `register_sampler`, imported here.
"""

from diffusion_lib.samplers.base import (
    SAMPLERS,
    Frames,
    LevelHealth,
    SampleResult,
    SamplerInfo,
    Setting,
    get_sampler,
    register_sampler,
)
from diffusion_lib.samplers.ddim import ddim_sample, ddim_timesteps
from diffusion_lib.samplers.ddpm import ddpm_sample
from diffusion_lib.samplers.edm import euler_edm_sample, heun_sample
from diffusion_lib.samplers.known import Known, resampling_schedule
from diffusion_lib.samplers.langevin import (
    annealed_langevin_dynamics,
    langevin_dynamics,
    technique4_step_lr,
)
from diffusion_lib.samplers.probability_flow import dpm_solver_pp_sample, pf_ode_sample
from diffusion_lib.samplers.sde import (
    ancestral_sample,
    euler_maruyama_sample,
    reverse_diffusion_sample,
)
from diffusion_lib.samplers.spec import SamplerSpec
from diffusion_lib.samplers.ve_ancestral import ve_ancestral_coefficients, ve_ancestral_sample

__all__ = [
    "SAMPLERS",
    "Frames",
    "Known",
    "LevelHealth",
    "SampleResult",
    "SamplerInfo",
    "SamplerSpec",
    "Setting",
    "ancestral_sample",
    "annealed_langevin_dynamics",
    "ddim_sample",
    "ddim_timesteps",
    "ddpm_sample",
    "dpm_solver_pp_sample",
    "euler_edm_sample",
    "euler_maruyama_sample",
    "get_sampler",
    "heun_sample",
    "langevin_dynamics",
    "pf_ode_sample",
    "register_sampler",
    "resampling_schedule",
    "reverse_diffusion_sample",
    "technique4_step_lr",
    "ve_ancestral_coefficients",
    "ve_ancestral_sample",
]
