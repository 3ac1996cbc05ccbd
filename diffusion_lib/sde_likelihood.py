"""Exact log-likelihoods of a score SDE through its probability-flow ODE (Song et al. 2021,
sec. 4.3 and appendix D.2; the instantaneous change of variables of neural ODEs).

Along dx/dt = F(x, t) = f - g^2 s / 2, the density obeys d log p_t(x(t)) / dt = -div F, so

    log p_eps(x) = log p_T(x(T)) + int_eps^T div F(x(t), t) dt,     x(eps) = x,

which `ode_log_likelihood` integrates together with x, from eps to T, by Dormand-Prince.
div F is computed exactly (one backward pass per dimension: for low-dimensional data and tests)
or by the Hutchinson-Skilling estimator v^T (dF/dx) v with one probe v per example, Rademacher
or Gaussian, fixed over the trajectory (the integral of unbiased estimates with one probe is an
unbiased estimate of the integral). Probes are drawn from a seed, so a figure can be reproduced.

Bits per dimension of 8-bit data use uniform dequantisation, as the score_sde paper does: pixels
k in {0..255} become v = (k + u) / 256, u ~ U[0, 1)^D, mapped to the model's units by an affine
x = a v + b; then -log2 P(k) <= E_u[-log2 p_x(x)] - sum_d log2 |a_d| + 8 D (`bits_per_dim`).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import tensorflow as tf

from diffusion_lib import _checks
from diffusion_lib.ode import dormand_prince
from diffusion_lib.sde import SDE

PROBES = ("rademacher", "gaussian")
DIVERGENCES = ("hutchinson", "exact")


@dataclasses.dataclass(frozen=True)
class Likelihood:
    """Per example: log p_eps(x) in nats [B], the prior's part and the integral's; the solver's
    network evaluations (each one a forward and a backward pass)."""

    log_prob: np.ndarray
    prior_log_prob: np.ndarray
    delta: np.ndarray
    evaluations: int
    latent: np.ndarray  # x(T), the point of the prior x maps to


def _probe(shape, seed, kind: str, dtype) -> tf.Tensor:
    seed = _checks.seed_tensor(seed)
    if kind == "gaussian":
        return tf.random.stateless_normal(shape, seed, dtype=dtype)
    signs = tf.random.stateless_uniform(shape, seed, minval=0, maxval=2, dtype=tf.int32)
    return tf.cast(2 * signs - 1, dtype)


def _per_example_sum(v: tf.Tensor) -> tf.Tensor:
    return tf.reduce_sum(tf.reshape(v, [tf.shape(v)[0], -1]), axis=1)


def ode_log_likelihood(
    score_fn,
    sde: SDE,
    x,
    *,
    divergence: str = "hutchinson",
    probe: str = "rademacher",
    seed=0,
    eps: float | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
) -> Likelihood:
    """log p_eps(x) of the model whose score is score_fn(x, t), for x [B, ...] in model units.

    eps: where the ODE starts (the SDE's default_eps if None): the density is that of the data
    perturbed to time eps, which is what a score model defines.
    """
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
    if probe not in PROBES:
        raise ValueError(f"probe must be one of {PROBES}, got {probe!r}")
    x = _checks.check_finite(_checks.as_float_tensor(x, "x"), "x")
    _checks.check_batched(x, "x")
    eps = sde.default_eps if eps is None else float(eps)
    if not 0 < eps < sde.T:
        raise ValueError(f"eps must be in (0, {sde.T}), got {eps!r}")
    dim = int(np.prod(x.shape[1:]))
    v = _probe(tf.shape(x), seed, probe, x.dtype)

    def flow(x_t, t):
        tt = tf.fill([tf.shape(x_t)[0]], t)
        return sde.reverse_drift(score_fn, x_t, tt, probability_flow=True)

    @tf.function(autograph=False)
    def hutchinson(t, state):
        x_t = state[0]
        with tf.GradientTape() as tape:
            tape.watch(x_t)
            drift = flow(x_t, t)
            projected = tf.reduce_sum(drift * v)
        grad = tape.gradient(projected, x_t)
        return drift, _per_example_sum(grad * v)

    @tf.function(autograph=False)
    def exact(t, state):
        x_t = state[0]
        flat_shape = tf.shape(x_t)
        total = tf.zeros([flat_shape[0]], x_t.dtype)
        drift = None
        for j in range(dim):  # unrolled: dim is small where the exact divergence is used
            basis = tf.reshape(tf.one_hot(j, dim, dtype=x_t.dtype), [1, *x_t.shape[1:]])
            with tf.GradientTape() as tape:
                tape.watch(x_t)
                drift = flow(x_t, t)
                projected = tf.reduce_sum(drift * basis)
            total += _per_example_sum(tape.gradient(projected, x_t) * basis)
        return drift, total

    step = hutchinson if divergence == "hutchinson" else exact
    delta0 = tf.zeros([tf.shape(x)[0]], x.dtype)
    solution = dormand_prince(
        lambda t, state: step(t, state), (x, delta0), eps, sde.T, rtol=rtol, atol=atol
    )
    latent, delta = solution.y
    prior = sde.prior_logp(latent)
    return Likelihood(
        log_prob=(prior + delta).numpy(),
        prior_log_prob=prior.numpy(),
        delta=delta.numpy(),
        evaluations=solution.evaluations,
        latent=latent.numpy(),
    )


def dequantize(pixels, seed) -> np.ndarray:
    """v = (k + u) / 256 for 8-bit pixels k, u ~ U[0, 1) from `seed` (float64, in (0, 1))."""
    pixels = np.asarray(pixels)
    if not np.issubdtype(pixels.dtype, np.integer) or pixels.min() < 0 or pixels.max() > 255:
        raise ValueError("pixels must be integers in [0, 255]")
    u = np.random.default_rng(seed).random(pixels.shape)
    return (pixels + u) / 256.0


def bits_per_dim(log_prob, dim: int, log_abs_scale: float) -> np.ndarray:
    """Bits per dimension of 8-bit data from log p_x (nats [B]) of its dequantised points mapped
    to model units by x = a v + b; log_abs_scale = sum_d log |a_d| (D log 2 for v in [0, 1)
    mapped to [-1, 1))."""
    dim = _checks.positive_int(dim, "dim")
    return (-np.asarray(log_prob) - log_abs_scale) / (dim * math.log(2.0)) + 8.0
