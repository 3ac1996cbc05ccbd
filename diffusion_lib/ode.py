"""An adaptive Runge-Kutta solver for the probability-flow ODE and its likelihood.

`dormand_prince` integrates dy/dt = fun(t, y) for a tuple of tensors y from t0 to t1 (either
direction) with the Dormand-Prince 5(4) pair (Dormand & Prince 1980; the method of scipy's and
MATLAB's RK45/ode45): the fifth-order solution is kept, the embedded fourth-order one estimates
the error, and a step is accepted when

    sqrt(mean(((y5 - y4) / (atol + rtol * max(|y|, |y_new|)))^2)) <= 1

over every element of every tensor (the whole batch is one system, as in score_sde's
solve_ivp call, so all examples share the step sizes). The last stage of an accepted step is the
first of the next ("first same as last"), so a step costs 6 evaluations. The first step size is
chosen from the derivative's size as in Hairer, Norsett & Wanner (II.4), one evaluation more.
`stops` lists times to land on exactly (frames of a trajectory), each reported to `at_stop`.

It runs in eager mode (step-size control is Python) around `fun`, which should be a
`tf.function` for speed; on an ODE of a network that is where the time goes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

State = tuple[tf.Tensor, ...]

_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_B5 = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
_E = tuple(b5 - b4 for b5, b4 in zip(_B5, _B4, strict=True))


@dataclasses.dataclass(frozen=True)
class OdeSolution:
    y: State
    evaluations: int  # calls of fun
    accepted: int
    rejected: int


def _combine(y: State, h: float, ks: Sequence[State], weights: Sequence[float]) -> State:
    out = []
    for i, y_i in enumerate(y):
        total = y_i
        for k, w in zip(ks, weights, strict=False):
            if w:
                total = total + tf.cast(h * w, y_i.dtype) * k[i]
        out.append(total)
    return tuple(out)


def _rms(parts: Sequence[tf.Tensor]) -> float:
    flat = tf.concat([tf.reshape(tf.cast(p, tf.float64), [-1]) for p in parts], axis=0)
    return float(tf.sqrt(tf.reduce_mean(tf.square(flat))))


def dormand_prince(
    fun: Callable[[tf.Tensor, State], State],
    y0: State,
    t0: float,
    t1: float,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    stops: Sequence[float] = (),
    at_stop: Callable[[float, State], None] | None = None,
    progress: Callable[[float], None] | None = None,
    max_evaluations: int = 100_000,
) -> OdeSolution:
    """y(t1) for dy/dt = fun(t, y), y(t0) = y0. fun gets t as a scalar tensor of y[0]'s dtype and
    returns a tuple shaped like y. `progress(f)` gets the fraction of [t0, t1] covered."""
    if not (rtol > 0 and atol > 0):
        raise ValueError(f"rtol and atol must be positive, got {rtol}, {atol}")
    if t0 == t1:
        raise ValueError("t0 and t1 must differ")
    y = tuple(tf.convert_to_tensor(v) for v in y0)
    dtype = y[0].dtype
    direction = 1.0 if t1 > t0 else -1.0
    span = abs(t1 - t0)
    stops = sorted({float(s) for s in stops}, key=lambda s: direction * s)
    if any(direction * (s - t0) < 0 or direction * (s - t1) > 0 for s in stops):
        raise ValueError(f"stops must lie between t0={t0} and t1={t1}, got {stops}")
    evaluations = 0

    def f(t: float, state: State) -> State:
        nonlocal evaluations
        evaluations += 1
        if evaluations > max_evaluations:
            raise RuntimeError(
                f"the ODE solver exceeded {max_evaluations} evaluations (stiff, or tolerances "
                f"rtol={rtol}, atol={atol} too tight)"
            )
        return tuple(fun(tf.constant(t, dtype), state))

    def scale(a: State, b: State) -> list[tf.Tensor]:
        return [atol + rtol * tf.maximum(tf.abs(u), tf.abs(v)) for u, v in zip(a, b, strict=True)]

    t = float(t0)
    k1 = f(t, y)
    # The first step (Hairer, Norsett & Wanner, II.4): from the sizes of y and of its derivative.
    sc = scale(y, y)
    d0 = _rms([u / s for u, s in zip(y, sc, strict=True)])
    d1 = _rms([k / s for k, s in zip(k1, sc, strict=True)])
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    h0 = min(h0, span)
    k_probe = f(t + direction * h0, _combine(y, direction * h0, [k1], [1.0]))
    d2 = _rms([(kp - k) / s for kp, k, s in zip(k_probe, k1, sc, strict=True)]) / h0
    h1 = max(1e-6, h0 * 1e-3) if max(d1, d2) <= 1e-15 else (0.01 / max(d1, d2)) ** (1 / 5)
    h = min(100 * h0, h1, span)

    accepted = rejected = 0
    pending = list(stops)
    while direction * (t1 - t) > 1e-12 * max(1.0, abs(t1)):
        target = pending[0] if pending else t1
        step = min(h, abs(target - t))
        lands = step == abs(target - t)
        hs = direction * step
        ks = [k1]
        for stage in range(1, 7):
            ks.append(f(t + _C[stage] * hs, _combine(y, hs, ks, _A[stage])))
        y_new = _combine(y, hs, ks, _B5)
        err = _combine(tuple(tf.zeros_like(v) for v in y), hs, ks, _E)
        sc = scale(y, y_new)
        err_norm = _rms([e / s for e, s in zip(err, sc, strict=True)])
        if not np.isfinite(err_norm):
            raise FloatingPointError(f"the ODE's state became non-finite at t={t}")
        if err_norm <= 1.0:
            accepted += 1
            t = target if lands else t + hs
            y, k1 = y_new, ks[6]
            if lands and pending and t == pending[0]:
                pending.pop(0)
                if at_stop is not None:
                    at_stop(t, y)
            if progress is not None:
                progress(min(1.0, abs(t - t0) / span))
            factor = 10.0 if err_norm == 0 else min(10.0, 0.9 * err_norm ** (-1 / 5))
            # A step shortened to land on a stop says little about longer ones: keep h.
            h = max(h, step * factor) if lands else step * factor
        else:
            rejected += 1
            h = step * max(0.2, 0.9 * err_norm ** (-1 / 5))
    return OdeSolution(y, evaluations, accepted, rejected)
