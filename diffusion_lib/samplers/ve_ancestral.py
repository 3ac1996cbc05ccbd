"""Ancestral sampling of a noise-conditional score model (Song et al. 2021, "Score-Based
Generative Modeling through SDEs", appendix F, eq. 47): the NCSN / SMLD counterpart of DDPM's
ancestral sampler, one network call per noise level.

Noise levels sigma_1 > ... > sigma_L perturb data as x_i = x_0 + sigma_i z (the variance-
exploding process). Given x_i, Tweedie's formula estimates x_0 as x_i + sigma_i^2 s(x_i, sigma_i);
the step draws x_{i+1} from the Gaussian posterior q(x_{i+1} | x_i, x_0) at that estimate:

    x_{i+1} = x_i + (sigma_i^2 - sigma_{i+1}^2) s(x_i, sigma_i)
              + sqrt(sigma_{i+1}^2 (sigma_i^2 - sigma_{i+1}^2) / sigma_i^2) z,   z ~ N(0, I)

and the last step (sigma_{L+1} = 0) is Tweedie's formula itself, x_L + sigma_L^2 s(x_L, sigma_L),
with no noise. L levels cost L network calls, against L * steps_per_level + 1 for annealed
Langevin dynamics on the same levels; the chain moves by exactly the noise each level removes, so
it cannot lag behind its schedule as an under-stepped Langevin chain can (its health figures, as
annealed Langevin's, show it).

score_fn(x, sigma) with sigma a float tensor [B] in x's dtype, as for annealed Langevin.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from diffusion_lib import _checks
from diffusion_lib.samplers.base import (
    Frames,
    Progress,
    SampleResult,
    initial_state,
    level_health_watch,
    register_sampler,
    run_chain,
    score_table_step,
    split_seed,
)
from diffusion_lib.samplers.known import Known


def ve_ancestral_coefficients(sigmas: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(drift, spread) per step for `sigmas` [L], decreasing: step i is
    x + drift[i] * s(x, sigma_i) + spread[i] * z, the last one (to sigma = 0) Tweedie's formula."""
    sigmas = _checks.noise_levels(sigmas)
    if np.any(np.diff(sigmas) >= 0):
        raise ValueError("sigmas must be decreasing (sigma_1 > ... > sigma_L)")
    now = sigmas.astype(np.float64)
    after = np.append(now[1:], 0.0)
    drift = now**2 - after**2
    spread = np.sqrt(after**2 * drift / now**2)
    return drift, spread


@register_sampler("ve_ancestral", family="score", anneals=True)
def ve_ancestral_sample(
    score_fn: Callable[..., tf.Tensor],
    x,
    sigmas: Sequence[float],
    *,
    seed,
    data_rms: float = 1.0,
    frames: Frames = None,
    progress: Progress | None = None,
    strategy: tf.distribute.Strategy | None = None,
    known: Known | None = None,
) -> SampleResult:
    """Ancestral sampling from x [B, ...] ~ N(0, sigma_1^2 I) over decreasing `sigmas` [L]: L
    steps, the last to the posterior mean at sigma_L. `data_rms` scales the health figures only;
    `known`: entries given in advance (`samplers.known`), in model units."""
    drift, spread = ve_ancestral_coefficients(sigmas)
    sigmas = np.asarray(sigmas, np.float64)
    data_rms = _checks.positive_number(data_rms, "data_rms")
    _, chain_seed = split_seed(seed)
    x = initial_state(x, None, None, None, "x")
    step = score_table_step(score_fn, sigmas, drift, spread)

    # Health after step i (i < L): the chain should carry noise sigma_{i+1} on top of the data.
    carries = {i + 1: float(sigma) for i, sigma in enumerate(sigmas[1:])}
    health, watch = level_health_watch(carries, data_rms)
    # Position p at sigma_p; the last one, after Tweedie's formula, is x_0.
    marginals = (np.ones(sigmas.size + 1), np.append(sigmas, 0.0))
    result = run_chain(
        step,
        x,
        sigmas.size,
        chain_seed,
        frames,
        progress,
        strategy,
        watch=watch,
        watch_at=carries,
        known=known,
        marginals=marginals,
    )
    return dataclasses.replace(result, health=tuple(health))
