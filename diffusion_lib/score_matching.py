"""Score-matching objectives. Each returns per-example losses [B]; the caller averages.

For data x [B, ...] and a score model s(x) ~ grad_x log p(x), with D = prod(x.shape[1:]):

    score_matching_loss             tr(grad_x s(x)) + 0.5 ||s(x)||^2
                                    (Hyvarinen 2005, eq. 4; exact Jacobian trace: D backward
                                    passes' worth of work, for low-dimensional data only)
    sliced_score_matching_loss      v^T (grad_x s(x)) v + 0.5 (v^T s(x))^2, averaged over
                                    projections v (Song et al. 2019, "SSM", eq. 7); with
                                    variance reduction the second term is 0.5 ||s(x)||^2 (eq. 8,
                                    exact for E[v v^T] = I). J v by forward-mode autodiff.
    denoising_score_matching_loss   0.5 ||s(x + sigma z) + z / sigma||^2
                                    (Vincent 2011: the target is grad log q_sigma(x~ | x))
    ncsn_loss                       0.5 * lambda(sigma) ||s(x~, sigma) + z / sigma||^2 with
                                    lambda(sigma) = sigma^2 and sigma drawn uniformly from the
                                    levels (Song & Ermon 2019, eqs. 5-6)

For x ~ N(0, I) and s(x) = -x the first two both equal -D/2 in expectation. Randomness is
stateless: each function takes a `seed` (int or int [2]).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf

from diffusion_lib import _checks

ScoreFn = Callable[..., tf.Tensor]
PROJECTIONS = ("gaussian", "rademacher")


def _flat_sum(x: tf.Tensor) -> tf.Tensor:
    """Sum over all but the batch axis: [B, ...] -> [B]."""
    return tf.reduce_sum(tf.reshape(x, [tf.shape(x)[0], -1]), axis=1)


def _data(x, name: str = "x") -> tf.Tensor:
    x = _checks.as_float_tensor(x, name)
    _checks.check_batched(x, name)
    return _checks.check_finite(x, name)


def _given_or_drawn(given, x: tf.Tensor, seed, name: str) -> tf.Tensor:
    """The explicit randomness if given (checked against x), else N(0, I) like x from `seed`."""
    if given is not None:
        given = tf.cast(_checks.as_float_tensor(given, name), x.dtype)
        _checks.check_same_shape(given, x, name, "x")
        return given
    if seed is None:
        raise ValueError(f"give seed or {name}")
    return tf.random.stateless_normal(tf.shape(x), _checks.seed_tensor(seed), dtype=x.dtype)


def score_matching_loss(score_fn: ScoreFn, x) -> tf.Tensor:
    """Exact (implicit) score matching, [B]. score_fn(x [B, ...]) -> [B, ...]."""
    x = _data(x)
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(x)
        score = _checks.call_network(score_fn, x)
        flat_score = tf.reshape(score, [tf.shape(x)[0], -1])
    # batch_jacobian: [B, D, *x.shape[1:]]; score_fn must not mix examples across the batch.
    jacobian = tape.batch_jacobian(flat_score, x)
    jacobian = tf.reshape(jacobian, [tf.shape(x)[0], tf.shape(flat_score)[1], -1])
    trace = tf.linalg.trace(jacobian)
    return trace + 0.5 * tf.reduce_sum(tf.square(flat_score), axis=1)


def sliced_score_matching_loss(
    score_fn: ScoreFn,
    x,
    num_projections: int = 1,
    *,
    seed,
    projection: str = "gaussian",
    variance_reduction: bool = False,
) -> tf.Tensor:
    """Sliced score matching, [B], averaged over `num_projections` random directions per example.

    projection: "gaussian" (v ~ N(0, I)) or "rademacher" (entries +-1). Both have E[v v^T] = I.
    variance_reduction: replace 0.5 (v^T s)^2 by its expectation over v, 0.5 ||s||^2 (SSM-VR).
    """
    if projection not in PROJECTIONS:
        raise ValueError(f"projection must be one of {PROJECTIONS}, got {projection!r}")
    if isinstance(num_projections, bool) or not isinstance(num_projections, int | np.integer):
        raise ValueError(f"num_projections must be a positive integer, got {num_projections!r}")
    if num_projections < 1:
        raise ValueError(f"num_projections must be a positive integer, got {num_projections!r}")
    x = _data(x)
    batch = tf.shape(x)[0]
    # Every example is repeated once per projection: [M * B, ...], projection-major.
    x_rep = tf.tile(x, tf.concat([[num_projections], tf.ones([x.shape.rank - 1], tf.int32)], 0))
    seed = _checks.seed_tensor(seed)
    if projection == "gaussian":
        v = tf.random.stateless_normal(tf.shape(x_rep), seed, dtype=x.dtype)
    else:
        bits = tf.random.stateless_uniform(
            tf.shape(x_rep), seed, minval=0, maxval=2, dtype=tf.int32
        )
        v = tf.cast(2 * bits - 1, x.dtype)
    with tf.autodiff.ForwardAccumulator(primals=x_rep, tangents=v) as acc:
        score = _checks.call_network(score_fn, x_rep)
    jvp = acc.jvp(score)  # (grad_x s) v, [M * B, ...]
    loss = _flat_sum(v * jvp)
    if variance_reduction:
        loss += 0.5 * _flat_sum(tf.square(score))
    else:
        loss += 0.5 * tf.square(_flat_sum(v * score))
    return tf.reduce_mean(tf.reshape(loss, [num_projections, batch]), axis=0)


def denoising_score_matching_loss(
    score_fn: ScoreFn, x, sigma: float, *, seed=None, noise: tf.Tensor | None = None
) -> tf.Tensor:
    """Denoising score matching at one noise level, [B]. score_fn(x~ [B, ...]) -> [B, ...].

    Minimised by the score of the smoothed data density p_sigma = p * N(0, sigma^2 I).
    The noise z comes from `seed`, or is given as `noise` (like x), e.g. by a training step
    that draws it for the global batch so results do not depend on the replica count.
    """
    sigma = float(sigma)
    if not np.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"sigma must be a positive finite number, got {sigma!r}")
    x = _data(x)
    z = _given_or_drawn(noise, x, seed, "noise")
    perturbed = x + sigma * z
    score = _checks.call_network(score_fn, perturbed)
    return 0.5 * _flat_sum(tf.square(score + z / sigma))


def ncsn_loss(
    score_fn: ScoreFn,
    x,
    sigmas,
    *,
    seed=None,
    levels: tf.Tensor | None = None,
    noise: tf.Tensor | None = None,
) -> tf.Tensor:
    """Multi-level denoising score matching with lambda(sigma) = sigma^2, [B].

    Each example gets one level drawn uniformly from `sigmas` [L]; score_fn(x~, sigma [B]).
    With lambda = sigma^2 the per-level terms 0.5 ||sigma s + z||^2 are all O(1) (NCSN sec. 4.2).
    `levels` (int [B]) and `noise` (like x) may be given instead of drawn from `seed`.
    """
    sigmas = _checks.noise_levels(sigmas)
    x = _data(x)
    if levels is None or noise is None:
        if seed is None:
            raise ValueError("give seed, or both levels and noise")
        level_seed, noise_seed = tf.unstack(
            tf.random.experimental.stateless_split(_checks.seed_tensor(seed), num=2)
        )
    if levels is None:
        levels = tf.random.stateless_uniform(
            [tf.shape(x)[0]], level_seed, minval=0, maxval=sigmas.size, dtype=tf.int32
        )
    levels = _checks.check_batch_vector(levels, x, "levels")
    sigma = tf.gather(tf.constant(sigmas, x.dtype), levels)
    sigma_b = _checks.expand_to_rank(sigma, x.shape.rank)
    z = noise if noise is not None else None
    z = _given_or_drawn(z, x, None if noise is not None else noise_seed, "noise")
    score = _checks.call_network(score_fn, x + sigma_b * z, sigma)
    return 0.5 * _flat_sum(tf.square(sigma_b * score + z))
