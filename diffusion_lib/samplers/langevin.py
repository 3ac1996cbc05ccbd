"""Langevin dynamics and annealed Langevin dynamics (Song & Ermon 2019, "NCSN"; Song & Ermon
2020, "NCSNv2").

The two use different step conventions, each the one its settings come from:

Plain Langevin dynamics, step size alpha, in the tutorials' form (NCSN eq. 4):

    x_{k+1} = x_k + (alpha / 2) * score(x_k) + sqrt(alpha) * z_k,   z_k ~ N(0, I)

Annealed Langevin dynamics in NCSNv2's form (its Alg. 1, and the reference code of both ncsn
and ncsnv2; NCSN's paper prints alpha_i / 2 and sqrt(alpha_i), a factor 2 apart): for noise
levels sigma_1 > ... > sigma_L, `steps_per_level` steps at each level of

    x <- x + alpha_i * s(x, sigma_i) + sqrt(2 alpha_i) * z,   alpha_i = step_lr * sigma_i^2 / sigma_L^2

so `step_lr` means what NCSNv2's technique 4 computes (e.g. 6.2e-6 for its CIFAR-10 setting), and
the chain is stable only for step_lr < 2 sigma_L^2 (below). An optional last step moves to the
posterior mean under the smallest noise, x + sigma_L^2 * s(x, sigma_L) (Tweedie's formula;
Jolicoeur-Martineau et al. 2020), which removes the residual noise sigma_L leaves in the samples.

Chain health: at the end of each level the annealed sampler records the RMS of x beside the RMS
it should carry there, sqrt(data_rms^2 + sigma_i^2) (data plus noise of that level). A chain that
falls behind its schedule keeps far more noise than the network was trained on and never
recovers; the ratio shows it at once (`SampleResult.health`).

score_fn signatures: plain Langevin calls score_fn(x); annealed calls score_fn(x, sigma) with
sigma a float tensor [B] in x's dtype (every entry the current level).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from diffusion_lib import _checks
from diffusion_lib.samplers.base import (
    Frames,
    Progress,
    SampleResult,
    Setting,
    initial_state,
    level_health_watch,
    register_sampler,
    run_chain,
    score_table_step,
    split_seed,
)
from diffusion_lib.samplers.known import Known

ScoreFn = Callable[..., tf.Tensor]


def technique4_step_lr(sigmas: Sequence[float], steps_per_level: int) -> float:
    """NCSNv2's technique 4: the step_lr for which annealed Langevin dynamics best keeps the
    chain's noise at each level's sigma.

    On data of vanishing spread, a chain that enters level i carrying sigma_{i-1} = gamma sigma_i
    ends its T steps carrying r sigma_i with (u = step_lr / sigma_L^2, c = 1 - u, the update of
    this module)

        r^2 = c^(2T) (gamma^2 - K) + K,   K = 2u / (1 - c^2)  (the stationary ratio, > 1)

    Both terms exceed 1 (the chain starts too noisy and settles slightly too noisy), so the
    best u minimises r^2 (NCSNv2 asks for r^2 ~ 1): small u leaves the first term, large u
    inflates K. gamma is the geometric ratio of `sigmas`, as in NCSNv2 (geometric levels).
    """
    sigmas = _checks.noise_levels(sigmas)
    steps = _checks.positive_int(steps_per_level, "steps_per_level")
    if sigmas.size < 2:
        raise ValueError("technique 4 needs at least two noise levels")
    gamma = (sigmas[0] / sigmas[-1]) ** (1.0 / (sigmas.size - 1))

    def ratio(log_u: float) -> float:
        u = math.exp(log_u)
        c2 = (1.0 - u) ** 2
        k = 2.0 * u / (1.0 - c2)
        return c2**steps * (gamma**2 - k) + k

    lo, hi = math.log(1e-12), math.log(1.0)  # r^2 is unimodal in log u here: golden section
    golden = (math.sqrt(5.0) - 1.0) / 2.0
    for _ in range(200):
        a, b = hi - golden * (hi - lo), lo + golden * (hi - lo)
        if ratio(a) < ratio(b):
            hi = b
        else:
            lo = a
    return float(math.exp((lo + hi) / 2.0) * sigmas[-1] ** 2)


@register_sampler(
    "langevin",
    family="score",
    settings={"step_size": Setting(1e-3, positive=True), "num_steps": Setting(1_000, low=1)},
)
def langevin_dynamics(
    score_fn: ScoreFn,
    x,
    *,
    step_size: float,
    num_steps: int,
    seed,
    frames: Frames = None,
    progress: Progress | None = None,
    strategy: tf.distribute.Strategy | None = None,
) -> SampleResult:
    """Runs `num_steps` of Langevin dynamics from x [B, ...] with score_fn(x) -> [B, ...], in the
    tutorials' form x + (step_size / 2) s(x) + sqrt(step_size) z (NCSN eq. 4)."""
    step_size = _checks.positive_number(step_size, "step_size")
    num_steps = _checks.positive_int(num_steps, "num_steps")
    _, chain_seed = split_seed(seed)
    x = initial_state(x, None, None, None, "x")

    @tf.function(autograph=False)
    def step(x_k, i, step_seed):
        z = tf.random.stateless_normal(tf.shape(x_k), step_seed, dtype=x_k.dtype)
        alpha = tf.constant(step_size, x_k.dtype)  # not tf.cast: that rounds via float32
        return x_k + 0.5 * alpha * _checks.call_network(score_fn, x_k) + tf.sqrt(alpha) * z

    return run_chain(step, x, num_steps, chain_seed, frames, progress, strategy)


@register_sampler(
    "annealed_langevin",
    family="score",
    anneals=True,
    settings={
        "steps_per_level": Setting(5, low=1),
        "step_lr": Setting(2e-5, positive=True),
        "denoise_final": Setting(True),
    },
)
def annealed_langevin_dynamics(
    score_fn: ScoreFn,
    x,
    sigmas: Sequence[float],
    *,
    steps_per_level: int,
    step_lr: float,
    seed,
    denoise_final: bool,
    data_rms: float = 1.0,
    frames: Frames = None,
    progress: Progress | None = None,
    strategy: tf.distribute.Strategy | None = None,
    known: Known | None = None,
) -> SampleResult:
    """Annealed Langevin dynamics (NCSNv2 Alg. 1) from x [B, ...] over decreasing `sigmas` [L],
    score_fn(x, sigma [B]): x + alpha_i s + sqrt(2 alpha_i) z, alpha_i = step_lr sigma_i^2 / sigma_L^2.

    The chain has L * steps_per_level steps (plus one if `denoise_final`); frames index it.
    `data_rms` is the data's root mean square (1 for standardised data), used only for the
    per-level health figures in the result. `known`: entries given in advance
    (`samplers.known`), in model units, re-noised to each step's level.
    """
    sigmas = _checks.noise_levels(sigmas)
    if np.any(np.diff(sigmas) > 0):
        raise ValueError("sigmas must be non-increasing (sigma_1 >= ... >= sigma_L)")
    steps_per_level = _checks.positive_int(steps_per_level, "steps_per_level")
    step_lr = _checks.positive_number(step_lr, "step_lr")
    data_rms = _checks.positive_number(data_rms, "data_rms")
    # On a Gaussian score -x / v (v >= sigma_i^2) a step multiplies x by 1 - alpha_i / v, and
    # alpha_i / sigma_i^2 = step_lr / sigma_L^2: at 2 or more |1 - alpha_i / v| can exceed 1 and
    # the chain diverges.
    if step_lr >= 2.0 * sigmas[-1] ** 2:
        raise ValueError(
            f"step_lr must be below 2 * sigma_L^2 = {2.0 * sigmas[-1] ** 2:.3g} (got {step_lr}): "
            "larger steps make annealed Langevin dynamics diverge (NCSN uses step_lr = 0.2 * "
            "sigma_L^2; NCSNv2's technique 4 picks it from the number of steps per level)"
        )
    _, chain_seed = split_seed(seed)
    x = initial_state(x, None, None, None, "x")

    num_langevin = sigmas.size * steps_per_level
    level_sigma = np.repeat(sigmas, steps_per_level)
    level_alpha = step_lr * level_sigma**2 / sigmas[-1] ** 2
    # One update for every step, x + drift[i] * s(x, sigma[i]) + spread[i] * z, with a table row
    # per step: (sigma_i, alpha_i, sqrt(2 alpha_i)) for Langevin steps and, for the final
    # denoising step, (sigma_L, sigma_L^2, 0): x + sigma_L^2 * s(x, sigma_L), no noise. A
    # tensor `if` choosing between the two made Grappler emit an AccumulateNV2 whose temporary
    # variable collided between calls (AlreadyExistsError with a U-Net score model).
    step = score_table_step(
        score_fn,
        np.append(level_sigma, sigmas[-1]),
        np.append(level_alpha, sigmas[-1] ** 2),
        np.append(np.sqrt(2.0 * level_alpha), 0.0),
    )

    total = num_langevin + (1 if denoise_final else 0)
    level_ends = {(i + 1) * steps_per_level: float(sigma) for i, sigma in enumerate(sigmas)}
    health, watch = level_health_watch(level_ends, data_rms)
    # Position p (after p steps) at the level of step p - 1; after the denoising step, x_0.
    at = np.append(sigmas[0], level_sigma)
    at = np.append(at, 0.0) if denoise_final else at
    marginals = (np.ones(total + 1), at)
    result = run_chain(
        step,
        x,
        total,
        chain_seed,
        frames,
        progress,
        strategy,
        watch=watch,
        watch_at=level_ends,
        known=known,
        marginals=marginals,
    )
    return dataclasses.replace(result, health=tuple(health))
