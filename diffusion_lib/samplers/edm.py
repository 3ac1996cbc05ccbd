"""EDM's samplers (Karras et al. 2022, Algorithm 2): Heun's second-order method on the
probability-flow ODE in the noise level sigma, with optional churn, and Euler as its first-order
cut. They sample every score model here through its denoiser.

Every SDE here reads, with x = alpha(t) x_hat and sigma(t) = std(t) / alpha(t), as x_hat(sigma) =
x_0 + sigma z: a variance-exploding process in x_hat whatever the model's own scaling. The
denoiser is Tweedie's formula in those coordinates,

    D(x_hat; sigma) = x_hat + sigma^2 alpha s(alpha x_hat, t(sigma))

(s the model's score; for Gaussian data D = mu + Sigma (Sigma + sigma^2 I)^-1 (x_hat - mu)), and
the ODE is dx_hat / dsigma = (x_hat - D(x_hat; sigma)) / sigma. The noise levels follow EDM's
schedule, uniform in sigma^(1 / rho) from sigma_max to sigma_min, then 0:

    sigma_i = (sigma_max^(1/rho) + i / (N - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,

clipped to the model's own range (sigma(T) and sigma(eps) of its SDE). N steps cost 2N - 1
network calls (the last step, to sigma = 0, is Euler's); Euler costs N. Churn: at the levels in
[s_min, s_max], gamma = min(s_churn / N, sqrt(2) - 1) raises sigma to sigma (1 + gamma) with
fresh noise of scale s_noise before the step (s_churn 0: deterministic).
"""

from __future__ import annotations

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
    register_sampler,
    run_chain,
    split_seed,
)
from diffusion_lib.samplers.known import Known
from diffusion_lib.samplers.probability_flow import time_of_log_snr
from diffusion_lib.sde import SDE

SETTINGS = {
    "num_steps": Setting(18, low=1, high=1000),
    "sigma_min": Setting(0.002, positive=True),
    "sigma_max": Setting(80.0, positive=True),
    "rho": Setting(7.0, positive=True, high=100.0),
    "s_churn": Setting(0.0, low=0.0),
    "s_min": Setting(0.0, low=0.0),
    "s_max": Setting(math.inf, positive=True, finite=False),
    "s_noise": Setting(1.0, positive=True, high=10.0),
}


def edm_sigmas(num_steps: int, sigma_min: float, sigma_max: float, rho: float) -> np.ndarray:
    """EDM's N noise levels from sigma_max down to sigma_min, and a last 0 (float64 [N + 1])."""
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min} and {sigma_max}")
    if num_steps == 1:
        return np.array([sigma_max, 0.0])
    ramp = np.linspace(0.0, 1.0, num_steps)
    low, high = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    return np.append((high + ramp * (low - high)) ** rho, 0.0)


def sigma_range(sde: SDE) -> tuple[float, float]:
    """(sigma at the SDE's eps, sigma at T): the levels its model was trained on."""
    alpha, std = (v.numpy() for v in sde.marginal(np.array([sde.default_eps, sde.T])))
    ratio = std / alpha
    return float(ratio[0]), float(ratio[1])


def _denoised(score_fn, x_hat: tf.Tensor, level, t, alpha) -> tf.Tensor:
    """D(x_hat; sigma = level) from the model's score at time t, where alpha(t) is `alpha`."""
    dt = x_hat.dtype
    alpha = tf.cast(alpha, dt)
    times = tf.fill([tf.shape(x_hat)[0]], tf.cast(t, dt))
    score = _checks.call_network(score_fn, alpha * x_hat, times)
    return x_hat + tf.cast(level, dt) ** 2 * alpha * score


def denoise_at(score_fn, sde: SDE, x_hat, sigma: float) -> tf.Tensor:
    """EDM's denoiser D(x_hat; sigma) of a score model of `sde`, x_hat in the VE coordinates
    (x = alpha(t) x_hat at the t where std / alpha = sigma)."""
    t = time_of_log_snr(sde, -np.log(sigma), sde.default_eps * 1e-3, sde.T)[0]
    alpha = float(sde.marginal(np.array([t]))[0].numpy()[0])
    return _denoised(score_fn, _checks.as_float_tensor(x_hat, "x_hat"), sigma, t, alpha)


def _tables(sde: SDE, sigmas: np.ndarray, gammas: np.ndarray) -> dict[str, tf.Tensor]:
    """Per step i: the raised level sigma_hat, the next level, and for each the time t(sigma)
    and alpha(t) the model is called at (a dummy for the last level, 0, never called)."""
    hat = sigmas[:-1] * (1.0 + gammas)

    def at(levels):
        levels = np.maximum(levels, 1e-12)
        times = time_of_log_snr(sde, -np.log(levels), sde.default_eps * 1e-3, sde.T)
        alpha = sde.marginal(times)[0].numpy()
        return times, alpha

    t_hat, a_hat = at(hat)
    t_next, a_next = at(sigmas[1:])
    values = {
        "sigma": sigmas[:-1],
        "sigma_hat": hat,
        "sigma_next": sigmas[1:],
        "t_hat": t_hat,
        "alpha_hat": a_hat,
        "t_next": t_next,
        "alpha_next": a_next,
        "second": (sigmas[1:] > 0).astype(np.float64),
    }
    return {key: tf.constant(np.asarray(v, np.float64)) for key, v in values.items()}


def _sample(
    score_fn: Callable[[tf.Tensor, tf.Tensor], tf.Tensor],
    sde: SDE,
    shape: Sequence[int] | None,
    *,
    second_order: bool,
    num_steps: int,
    sigma_min: float,
    sigma_max: float,
    rho: float,
    s_churn: float,
    s_min: float,
    s_max: float,
    s_noise: float,
    x,
    seed,
    frames: Frames,
    progress: Progress | None,
    strategy,
    dtype,
    known: Known | None,
) -> SampleResult:
    low, high = sigma_range(sde)
    sigmas = edm_sigmas(num_steps, max(sigma_min, low), min(sigma_max, high), rho)
    gamma = min(s_churn / num_steps, math.sqrt(2.0) - 1.0)
    gammas = np.where((sigmas[:-1] >= s_min) & (sigmas[:-1] <= s_max), gamma, 0.0)
    table = _tables(sde, sigmas, gammas)
    init_seed, chain_seed = split_seed(seed)
    if x is None:
        if shape is None:
            raise ValueError("give either shape or x")
        x = tf.random.stateless_normal(tuple(shape), init_seed, dtype=dtype) * sigmas[0]
    else:  # x of the chain's start, in the VE coordinates x_hat at sigma_max
        x = _checks.check_finite(_checks.as_float_tensor(x, "x"), "x")

    def denoised(x_hat, level, t, alpha):
        return _denoised(score_fn, x_hat, level, t, alpha)

    @tf.function(autograph=False)
    def step(x_hat, i, step_seed):
        dt = x_hat.dtype
        sigma, hat, after = (tf.cast(table[k][i], dt) for k in ("sigma", "sigma_hat", "sigma_next"))
        z = tf.random.stateless_normal(tf.shape(x_hat), step_seed, dtype=dt)
        x_hat = x_hat + tf.sqrt(tf.maximum(hat**2 - sigma**2, 0.0)) * s_noise * z
        slope = (x_hat - denoised(x_hat, hat, table["t_hat"][i], table["alpha_hat"][i])) / hat
        euler = x_hat + (after - hat) * slope
        if not second_order:
            return euler

        def heun():
            at_next = denoised(euler, after, table["t_next"][i], table["alpha_next"][i])
            return x_hat + (after - hat) * 0.5 * (slope + (euler - at_next) / after)

        return tf.cond(table["second"][i] > 0, heun, lambda: euler)

    marginals = (np.ones(num_steps + 1), sigmas)  # x_hat at sigma_i: alpha 1, std sigma
    result = run_chain(
        step, x, num_steps, chain_seed, frames, progress, strategy,
        known=known, marginals=marginals,
    )  # fmt: skip
    calls = 2 * num_steps - 1 if second_order else num_steps
    return SampleResult(result.samples, result.frames, result.frame_steps, (), calls)


def _sampler(second_order: bool, doc: str):
    def sample(
        score_fn: Callable[[tf.Tensor, tf.Tensor], tf.Tensor],
        sde: SDE,
        shape: Sequence[int] | None = None,
        *,
        x=None,
        seed,
        frames: Frames = None,
        progress: Progress | None = None,
        strategy: tf.distribute.Strategy | None = None,
        dtype: tf.DType = tf.float32,
        known: Known | None = None,
        **settings,
    ) -> SampleResult:
        return _sample(
            score_fn, sde, shape, second_order=second_order, x=x, seed=seed, frames=frames,
            progress=progress, strategy=strategy, dtype=dtype, known=known, **settings,
        )  # fmt: skip

    sample.__doc__ = doc
    return sample


heun_sample = register_sampler("heun", family="sde", settings=SETTINGS)(
    _sampler(
        True,
        "EDM's Heun sampler (2N - 1 network calls) of any score model's SDE, in the noise level; "
        "samples come back in the data's coordinates (sigma = 0).",
    )
)
euler_edm_sample = register_sampler("euler", family="sde", settings=SETTINGS)(
    _sampler(False, "Euler's method on EDM's schedule (N network calls): Heun's first-order cut.")
)
