"""Noise schedules: beta_t for discrete-time diffusion, sigma_i for NCSN.

All schedules are computed in float64 NumPy: they are coefficients, built once,
and `alphas_cumprod` (a product of up to thousands of factors close to 1) loses
digits near t = T in float32. Consumers cast to the tensor dtype when gathering.

Notation (Ho et al. 2020, sec. 2):
    beta_t            variance of q(x_t | x_{t-1}), t = 1..T (stored 0-based: betas[0] is beta_1)
    alpha_t           1 - beta_t
    alphas_cumprod    abar_t = prod_{s<=t} alpha_s

Beta kinds live in a name-keyed registry; add one with `@register_beta_schedule("name")`
in any module. Built in:
    linear    beta_t linear from start to end (Ho et al. 2020)
    quad      sqrt(beta_t) linear from sqrt(start) to sqrt(end)
    sigmoid   start + (end - start) * sigmoid(linspace(-6, 6, T))
    cosine    abar_t = f(t) / f(0), f(t) = cos(((t/T + s) / (1 + s)) * pi/2)^2, s = 0.008
              (Nichol & Dhariwal 2021, eq. 17); betas clipped at `max_beta` = 0.999.
              `start` and `end` are not used by this kind.

`sigma_schedule` is the geometric sequence sigma_1 > ... > sigma_L of Song & Ermon 2019, sec. 4.2.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import numpy as np

from diffusion_lib import _checks


class BetaSchedule(Protocol):
    """Returns float64 betas of shape [num_steps], each in (0, 1)."""

    def __call__(
        self, num_steps: int, start: float, end: float, *, max_beta: float
    ) -> np.ndarray: ...


BETA_SCHEDULES: dict[str, BetaSchedule] = {}


def register_beta_schedule(name: str) -> Callable[[BetaSchedule], BetaSchedule]:
    """Decorator adding a beta schedule kind under `name`."""

    def add(fn: BetaSchedule) -> BetaSchedule:
        if name in BETA_SCHEDULES:
            raise ValueError(f"beta schedule kind {name!r} is already registered")
        BETA_SCHEDULES[name] = fn
        return fn

    return add


@register_beta_schedule("linear")
def _linear(num_steps: int, start: float, end: float, *, max_beta: float) -> np.ndarray:
    return np.linspace(start, end, num_steps, dtype=np.float64)


@register_beta_schedule("quad")
def _quad(num_steps: int, start: float, end: float, *, max_beta: float) -> np.ndarray:
    return np.linspace(math.sqrt(start), math.sqrt(end), num_steps, dtype=np.float64) ** 2


@register_beta_schedule("sigmoid")
def _sigmoid(num_steps: int, start: float, end: float, *, max_beta: float) -> np.ndarray:
    z = np.linspace(-6.0, 6.0, num_steps, dtype=np.float64)
    return start + (end - start) / (1.0 + np.exp(-z))


@register_beta_schedule("cosine")
def _cosine(num_steps: int, start: float, end: float, *, max_beta: float) -> np.ndarray:
    s = 0.008
    steps = np.arange(num_steps + 1, dtype=np.float64) / num_steps
    f = np.cos((steps + s) / (1.0 + s) * math.pi / 2.0) ** 2
    alphas_cumprod = f / f[0]
    betas = 1.0 - alphas_cumprod[1:] / alphas_cumprod[:-1]
    return np.clip(betas, 0.0, max_beta)


def beta_schedule(
    kind: str,
    num_steps: int,
    start: float = 1e-4,
    end: float = 0.02,
    *,
    max_beta: float = 0.999,
) -> np.ndarray:
    """Betas for `num_steps` diffusion steps, float64 array of shape [num_steps].

    The defaults (1e-4 to 0.02 over 1000 steps) are Ho et al. 2020's linear schedule.
    Raises ValueError naming the argument for a non-positive `num_steps`, betas outside
    (0, 1), `start > end`, or an unknown `kind`.
    """
    if kind not in BETA_SCHEDULES:
        raise ValueError(f"kind must be one of {sorted(BETA_SCHEDULES)}, got {kind!r}")
    num_steps = _checks.positive_int(num_steps, "num_steps")
    for name, value in (("start", start), ("end", end), ("max_beta", max_beta)):
        if not (isinstance(value, int | float | np.floating) and 0.0 < float(value) < 1.0):
            raise ValueError(f"{name} must be in the open interval (0, 1), got {value!r}")
    if start > end:
        raise ValueError(f"start must not exceed end, got start={start} > end={end}")
    betas = np.asarray(
        BETA_SCHEDULES[kind](num_steps, float(start), float(end), max_beta=float(max_beta)),
        dtype=np.float64,
    )
    if betas.shape != (num_steps,):
        raise ValueError(
            f"beta schedule {kind!r} returned shape {betas.shape}, expected ({num_steps},)"
        )
    if not np.all((betas > 0.0) & (betas < 1.0)):
        raise ValueError(f"beta schedule {kind!r} produced betas outside (0, 1)")
    return betas


def sigma_schedule(sigma_max: float, sigma_min: float, num_levels: int) -> np.ndarray:
    """Geometric noise levels sigma_1 = sigma_max > ... > sigma_L = sigma_min, float64 [L].

    Song & Ermon 2019, sec. 4.2: {sigma_i} is a geometric sequence, sigma_{i-1}/sigma_i constant.
    """
    num_levels = _checks.positive_int(num_levels, "num_levels")
    sigma_max = _checks.positive_number(sigma_max, "sigma_max")
    sigma_min = _checks.positive_number(sigma_min, "sigma_min")
    if sigma_min > sigma_max:
        raise ValueError(f"sigma_min must not exceed sigma_max, got {sigma_min} > {sigma_max}")
    if num_levels == 1:
        if sigma_min != sigma_max:
            raise ValueError("num_levels=1 needs sigma_max == sigma_min")
        return np.array([float(sigma_max)], dtype=np.float64)
    return np.exp(
        np.linspace(math.log(sigma_max), math.log(sigma_min), num_levels, dtype=np.float64)
    )


LEVEL_SAMPLINGS = ("uniform", "log_normal")


def level_log_probs(sigmas, kind: str, log_mean: float = -1.2, log_std: float = 1.2) -> np.ndarray:
    """Log-probabilities [L] (normalised, float64) with which training draws each noise level.

    sigmas: each level's noise std in model units, any order (NCSN's levels; a DDPM timestep's
    sqrt((1 - abar_t) / abar_t), the std of x_t / sqrt(abar_t) around x_0).
    "uniform": every level alike (DDPM's and NCSN's draw). "log_normal": log sigma as close to
    N(log_mean, log_std^2) as the discrete levels allow (Karras et al. 2022, "EDM", p_train with
    P_mean -1.2, P_std 1.2 for data in [-1, 1]): level i gets the normal density at log sigma_i
    times the width of its cell in log sigma (halfway to each neighbour; the ends one-sided), so
    an uneven grid is not over-drawn where its levels crowd (DDPM's timesteps crowd at large
    sigma, where log sigma moves slowly).
    """
    sigmas = np.asarray(sigmas, np.float64)
    if sigmas.ndim != 1 or sigmas.size == 0 or not np.all(sigmas > 0):
        raise ValueError(f"sigmas must be a non-empty vector of positive values, got {sigmas!r}")
    if kind == "uniform":
        return np.full(sigmas.size, -math.log(sigmas.size))
    if kind != "log_normal":
        raise ValueError(f"kind must be one of {LEVEL_SAMPLINGS}, got {kind!r}")
    log_std = _checks.positive_number(log_std, "log_std")
    if sigmas.size == 1:
        return np.zeros(1)
    log_sigma = np.log(sigmas)
    order = np.argsort(log_sigma)
    ordered = log_sigma[order]
    gaps = np.diff(ordered)
    widths = np.empty_like(ordered)
    widths[0], widths[-1] = gaps[0] / 2, gaps[-1] / 2
    widths[1:-1] = (gaps[:-1] + gaps[1:]) / 2
    if np.any(widths <= 0):
        raise ValueError("sigmas must be distinct")
    log_p = np.empty_like(ordered)
    log_p[order] = -0.5 * ((ordered - log_mean) / log_std) ** 2 + np.log(widths)
    return log_p - np.logaddexp.reduce(log_p)
