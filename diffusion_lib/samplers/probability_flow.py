"""Deterministic samplers of a score SDE: its probability-flow ODE

    dx/dt = f(x, t) - g(t)^2 s(x, t) / 2

integrated from x(T) ~ prior down to t = eps, by an adaptive Runge-Kutta solver (`pf_ode`) or by
DPM-Solver++ (`dpm_solver_pp`, Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of
Diffusion Probabilistic Models", multistep form) in 10-20 network evaluations.

DPM-Solver++ solves the ODE in the data-prediction form. With lambda = log(alpha / std) (half the
log signal-to-noise ratio), x0(x, t) = (x + std^2 s) / alpha, and h = lambda_next - lambda_now,
the exact solution from t to t_next is

    x_next = (std_next / std) x + alpha_next int_lambda^lambda_next e^(-(lambda_next - l)) x0 dl,

and the solvers replace x0 along the step by its Taylor polynomial in lambda, with derivatives
from divided differences of the last predictions m0, m1, m2 (at lambda, lambda - h0,
lambda - h0 - h1; r0 = h0 / h, r1 = h1 / h). The three integrals are exact:
int_0^h e^(-(h - u)) u^j / j! du = -phi_1, h phi_2, -h^2 phi_3 for j = 0, 1, 2, with
phi_1 = e^(-h) - 1, phi_2 = phi_1 / h + 1, phi_3 = phi_2 / h - 1/2. So

    order 1   x_next = (std_next / std) x - alpha_next phi_1 m0               (DDIM, eta 0)
    order 2   ... - alpha_next phi_1 D / 2,  D = (m0 - m1) / r0
    order 3   ... + alpha_next phi_2 D1 - alpha_next phi_3 D2, with
              D1_0 = (m0 - m1) / r0, D1_1 = (m1 - m2) / r1,
              D1 = D1_0 + r0 / (r0 + r1) (D1_0 - D1_1)   ~ h x0',
              D2 = 2 (D1_0 - D1_1) / (r0 + r1)           ~ h^2 x0''

(the factor 2 in D2 is what makes the step's local error O(h^4); the tests measure it).

Each step costs one network call (the prediction m0 at the step's start). The first steps use the
orders the history allows; below 10 steps the last steps drop back to lower order, which is
steadier there. Steps are uniform in lambda by default (`uniform_time` for uniform in t).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from diffusion_lib import _checks
from diffusion_lib.ode import dormand_prince
from diffusion_lib.samplers.base import (
    Frames,
    Progress,
    SampleResult,
    Setting,
    frame_indices,
    register_sampler,
    run_chain,
)
from diffusion_lib.samplers.sde import ScoreFn, _eps, _start, batch_mapper, denoise_result
from diffusion_lib.sde import SDE, data_prediction

# The adaptive solver has no fixed chain: frames are taken at FRAME_SLICES + 1 times evenly
# spaced from T to eps (frame step k at t = T - k (T - eps) / FRAME_SLICES).
FRAME_SLICES = 100


def log_snr(sde: SDE, t) -> np.ndarray:
    """lambda(t) = log(alpha(t) / std(t)), float64."""
    alpha, std = sde.marginal(np.atleast_1d(np.asarray(t, np.float64)))
    return np.log(alpha.numpy()) - np.log(std.numpy())


def time_of_log_snr(sde: SDE, lam, lo: float, hi: float) -> np.ndarray:
    """The t in [lo, hi] with lambda(t) = lam (lambda decreases in t), by bisection to float64
    precision."""
    lam = np.atleast_1d(np.asarray(lam, np.float64))
    a, b = np.full_like(lam, lo), np.full_like(lam, hi)
    for _ in range(80):
        mid = 0.5 * (a + b)
        above = log_snr(sde, mid) > lam  # mid is earlier than the answer
        a, b = np.where(above, mid, a), np.where(above, b, mid)
    return 0.5 * (a + b)


def dpm_solver_times(sde: SDE, num_steps: int, eps: float, uniform_time: bool) -> np.ndarray:
    """num_steps + 1 times from T to eps, uniform in lambda (or in t)."""
    if uniform_time:
        return sde.time_grid(num_steps, eps)
    ends = log_snr(sde, [sde.T, eps])
    lams = np.linspace(ends[0], ends[1], num_steps + 1)
    times = time_of_log_snr(sde, lams, eps, sde.T)
    times[0], times[-1] = sde.T, eps
    return times


def dpm_solver_tables(sde: SDE, times: np.ndarray, order: int) -> np.ndarray:
    """[K, 4]: step k is x_next = c0 x + c1 m0 + c2 m1 + c3 m2 (m0 the prediction at times[k],
    m1, m2 the two before)."""
    alpha, std = (v.numpy() for v in sde.marginal(times))
    lam = np.log(alpha) - np.log(std)
    steps = len(times) - 1
    table = np.zeros((steps, 4))
    for k in range(steps):
        use = min(order, k + 1)
        if steps < 10:
            use = min(use, steps - k)
        h = lam[k + 1] - lam[k]
        phi1 = np.expm1(-h)
        a_next = alpha[k + 1]
        coeff = np.array([-a_next * phi1, 0.0, 0.0])
        if use >= 2:
            r0 = (lam[k] - lam[k - 1]) / h
            d1_0 = np.array([1.0, -1.0, 0.0]) / r0
        if use == 2:
            coeff -= 0.5 * a_next * phi1 * d1_0
        elif use == 3:
            r1 = (lam[k - 1] - lam[k - 2]) / h
            d1_1 = np.array([0.0, 1.0, -1.0]) / r1
            d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
            d2 = 2.0 * (d1_0 - d1_1) / (r0 + r1)
            phi2 = phi1 / h + 1.0
            phi3 = phi2 / h - 0.5
            coeff += a_next * phi2 * d1 - a_next * phi3 * d2
        table[k] = [std[k + 1] / std[k], *coeff]
    return table


@register_sampler(
    "dpm_solver_pp",
    family="sde",
    settings={
        "num_steps": Setting(20, low=1, high=1000),
        "order": Setting(2, low=1, high=3),
        "eps": Setting(0.0, low=0.0, high=0.5),
        "uniform_time": Setting(False),
        "denoise": Setting(False),
    },
)
def dpm_solver_pp_sample(
    score_fn: ScoreFn,
    sde: SDE,
    shape: Sequence[int] | None = None,
    *,
    x=None,
    seed,
    num_steps: int,
    order: int,
    eps: float,
    uniform_time: bool,
    denoise: bool,
    frames: Frames = None,
    progress: Progress | None = None,
    strategy: tf.distribute.Strategy | None = None,
    dtype: tf.DType = tf.float32,
) -> SampleResult:
    """DPM-Solver++ (multistep, `order` 1-3) from x(T) ~ prior (or `x`) to eps in `num_steps`
    network evaluations (one more with `denoise`). Deterministic given the starting noise."""
    _checks.positive_int(num_steps, "num_steps")
    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
    times = dpm_solver_times(sde, num_steps, _eps(sde, eps), uniform_time)
    table_t = tf.constant(times)
    table_c = tf.constant(dpm_solver_tables(sde, times, order))
    x, chain_seed = _start(sde, x, shape, seed, dtype)

    @tf.function(autograph=False)
    def step(state, i, step_seed):
        del step_seed  # deterministic
        x_k, m1, m2 = state
        dt = x_k.dtype
        t = tf.fill([tf.shape(x_k)[0]], tf.cast(table_t[i], dt))
        m0 = data_prediction(sde, _checks.call_network(score_fn, x_k, t), x_k, t)
        c = tf.cast(table_c[i], dt)
        return (c[0] * x_k + c[1] * m0 + c[2] * m1 + c[3] * m2, m0, m1)

    state = (x, tf.zeros_like(x), tf.zeros_like(x))
    result = run_chain(
        step, state, num_steps, chain_seed, frames, progress, strategy, sample_of=lambda s: s[0]
    )
    result = dataclasses.replace(result, evaluations=num_steps)
    if not denoise:
        return result
    samples = denoise_result(result, score_fn, sde, float(times[-1]), strategy, num_steps)
    return dataclasses.replace(samples, evaluations=num_steps + 1)


def probability_flow_fn(score_fn: ScoreFn, sde: SDE, strategy=None):
    """fun(t, (x,)) -> (dx/dt,) of the probability-flow ODE for `dormand_prince`, the network
    call split over the strategy's replicas."""

    @tf.function(autograph=False)
    def drift(x_r, t):
        return sde.reverse_drift(
            score_fn, x_r, tf.fill([tf.shape(x_r)[0]], t), probability_flow=True
        )

    mapped = batch_mapper(drift, strategy)
    return lambda t, state: (mapped(state[0], t),)


@register_sampler(
    "pf_ode",
    family="sde",
    settings={
        "rtol": Setting(1e-5, positive=True, high=0.1),
        "atol": Setting(1e-5, positive=True, high=0.1),
        "eps": Setting(0.0, low=0.0, high=0.5),
        "denoise": Setting(False),
    },
)
def pf_ode_sample(
    score_fn: ScoreFn,
    sde: SDE,
    shape: Sequence[int] | None = None,
    *,
    x=None,
    seed,
    rtol: float,
    atol: float,
    eps: float,
    denoise: bool,
    frames: Frames = None,
    progress: Progress | None = None,
    strategy: tf.distribute.Strategy | None = None,
    dtype: tf.DType = tf.float32,
) -> SampleResult:
    """The probability-flow ODE from x(T) ~ prior (or `x`) to eps by Dormand-Prince 5(4) at
    tolerances rtol / atol; `evaluations` reports the network calls it took."""
    x, _ = _start(sde, x, shape, seed, dtype)
    end = _eps(sde, eps)
    wanted = frame_indices(frames, FRAME_SLICES)
    stop_times = {
        sde.T - k * (sde.T - end) / FRAME_SLICES: k for k in wanted if 0 < k < FRAME_SLICES
    }
    recorded = {0: x} if 0 in wanted else {}

    def at_stop(t, state):
        recorded[stop_times[t]] = state[0]

    def report(fraction):
        if progress is not None:
            progress(int(round(fraction * FRAME_SLICES)), FRAME_SLICES)

    solution = dormand_prince(
        probability_flow_fn(score_fn, sde, strategy),
        (x,),
        sde.T,
        end,
        rtol=rtol,
        atol=atol,
        stops=sorted(stop_times),
        at_stop=at_stop,
        progress=report,
    )
    samples = solution.y[0]
    if FRAME_SLICES in wanted:
        recorded[FRAME_SLICES] = samples
    stacked = tf.stack([recorded[k] for k in wanted], axis=0) if wanted else None
    result = SampleResult(samples, stacked, wanted, evaluations=solution.evaluations)
    if not denoise:
        return result
    result = denoise_result(result, score_fn, sde, end, strategy, FRAME_SLICES)
    return dataclasses.replace(result, evaluations=solution.evaluations + 1)
