"""Score-matching objectives against closed forms for Gaussian data and linear scores."""

import math

import numpy as np
import pytest
import tensorflow as tf

from diffusion_lib.score_matching import (
    denoising_score_matching_loss,
    ncsn_loss,
    score_matching_loss,
    sliced_score_matching_loss,
)


def _normal(shape, seed):
    return tf.constant(np.random.default_rng(seed).normal(size=shape))


def _linear_score(matrix):
    a = tf.constant(matrix)
    return lambda x: tf.linalg.matvec(a, x)


@pytest.fixture(scope="module")
def matrix():
    # Not symmetric, so a transposed Jacobian or a wrong reshape changes the answer.
    return np.array([[-1.0, 0.4, 0.0], [0.1, -2.0, 0.3], [0.5, 0.0, -0.5]])


def test_exact_score_matching_per_example_for_a_linear_score(matrix):
    x = _normal([7, 3], 0)
    loss = score_matching_loss(_linear_score(matrix), x).numpy()
    sx = x.numpy() @ matrix.T
    np.testing.assert_allclose(loss, np.trace(matrix) + 0.5 * (sx**2).sum(1), rtol=1e-12)


def test_exact_score_matching_on_images_shape():
    x = _normal([4, 2, 2, 1], 1)
    loss = score_matching_loss(lambda v: -(v**3), x).numpy()
    flat = x.numpy().reshape(4, -1)
    np.testing.assert_allclose(loss, (-3 * flat**2).sum(1) + 0.5 * (flat**6).sum(1), rtol=1e-12)


@pytest.mark.parametrize("d", [2, 5])
def test_standard_normal_gives_minus_d_over_two(d):
    x = _normal([40_000, d], 2)
    score = lambda v: -v  # noqa: E731
    n = 40_000
    # Var of each per-example loss: 0.5 ||x||^2 has variance d/2 (exact SM and SSM-VR with
    # s=-x: tr term fixed); the plain sliced loss adds the projections' variance.
    exact = score_matching_loss(score, x).numpy()
    assert abs(exact.mean() + d / 2) < 5 * math.sqrt(d / 2 / n)
    for projection in ("gaussian", "rademacher"):
        sliced = sliced_score_matching_loss(score, x, 1, seed=3, projection=projection).numpy()
        assert abs(sliced.mean() + d / 2) < 5 * sliced.std() / math.sqrt(n), projection
    vr = sliced_score_matching_loss(score, x, 1, seed=3, variance_reduction=True).numpy()
    assert abs(vr.mean() + d / 2) < 5 * vr.std() / math.sqrt(n)


def test_sliced_matches_exact_per_example_with_many_projections(matrix):
    x = _normal([5, 3], 4)
    exact = score_matching_loss(_linear_score(matrix), x).numpy()
    sliced = sliced_score_matching_loss(_linear_score(matrix), x, 20_000, seed=5).numpy()
    vr = sliced_score_matching_loss(
        _linear_score(matrix), x, 20_000, seed=5, variance_reduction=True
    ).numpy()
    # Rademacher projections make v^T A v - tr(A) depend only on the off-diagonal entries.
    rad = sliced_score_matching_loss(
        _linear_score(matrix), x, 20_000, seed=5, projection="rademacher"
    ).numpy()
    for got in (sliced, vr, rad):
        assert np.all(np.abs(got - exact) < 0.1 * (1 + np.abs(exact))), (got, exact)
    assert np.abs(vr - exact).max() < np.abs(sliced - exact).max()


def test_sliced_score_matching_trains_a_keras_model_through_forward_mode():
    """Reverse-over-forward gradients reach the weights, and agree with exact SM's gradient."""
    import keras

    tf.keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input([3]), keras.layers.Dense(3, use_bias=False)])
    x = tf.cast(_normal([64, 3], 6), tf.float32)
    with tf.GradientTape(persistent=True) as tape:
        exact = tf.reduce_mean(score_matching_loss(model, x))
        sliced = tf.reduce_mean(
            sliced_score_matching_loss(model, x, 4000, seed=7, variance_reduction=True)
        )
    g_exact = tape.gradient(exact, model.trainable_weights)[0].numpy()
    g_sliced = tape.gradient(sliced, model.trainable_weights)[0].numpy()
    assert np.all(np.isfinite(g_sliced)) and np.abs(g_sliced).max() > 0
    np.testing.assert_allclose(g_sliced, g_exact, atol=0.05)


def test_denoising_score_matching_is_minimised_by_the_smoothed_score():
    """Data N(0, s^2 I) smoothed by sigma has score -x / (s^2 + sigma^2). Over the family
    s_c(x) = c x the DSM loss is quadratic in c with minimiser c* = -1 / (s^2 + sigma^2)."""
    s, sigma, n, d = 0.7, 0.5, 100_000, 2
    x = tf.constant(np.random.default_rng(8).normal(0, s, size=[n, d]))
    c_star = -1 / (s**2 + sigma**2)
    losses = {
        c: float(
            tf.reduce_mean(denoising_score_matching_loss(lambda v, c=c: c * v, x, sigma, seed=9))
        )
        for c in (c_star * 0.9, c_star, c_star * 1.1)
    }
    assert losses[c_star] < losses[c_star * 0.9] and losses[c_star] < losses[c_star * 1.1]
    # Fit the parabola through the three points (common random numbers): vertex near c*.
    cs, ls = np.array(list(losses)), np.array(list(losses.values()))
    a, b, _ = np.polyfit(cs, ls, 2)
    assert -b / (2 * a) == pytest.approx(c_star, rel=0.02)
    # At the optimum, E = 0.5 d s^2 / (s^2 + sigma^2) / sigma^2 (the irreducible part).
    expected = 0.5 * d * s**2 / (s**2 + sigma**2) / sigma**2
    assert losses[c_star] == pytest.approx(expected, rel=0.02)


def test_ncsn_loss_closed_form_at_the_true_score():
    """With lambda = sigma^2 and the true score, each level contributes 0.5 d s^2/(s^2+sigma^2)."""
    s, d, n = 1.0, 3, 100_000
    sigmas = np.array([2.0, 1.0, 0.5, 0.1])
    x = tf.constant(np.random.default_rng(10).normal(0, s, size=[n, d]))
    true_score = lambda v, sigma: -v / (s**2 + sigma[:, None] ** 2)  # noqa: E731
    loss = ncsn_loss(true_score, x, sigmas, seed=11).numpy()
    expected = np.mean(0.5 * d * s**2 / (s**2 + sigmas**2))
    assert abs(loss.mean() - expected) < 5 * loss.std() / math.sqrt(n)
    wrong = ncsn_loss(lambda v, sigma: 1.2 * true_score(v, sigma), x, sigmas, seed=11).numpy()
    excess = wrong - loss  # same seed, same noise: a paired comparison
    assert excess.mean() > 10 * excess.std() / math.sqrt(n)


def test_objectives_are_reproducible_for_a_seed():
    x = _normal([16, 2], 12)
    a = ncsn_loss(lambda v, s: -v, x, [1.0, 0.1], seed=1).numpy()
    np.testing.assert_array_equal(a, ncsn_loss(lambda v, s: -v, x, [1.0, 0.1], seed=1).numpy())
    assert not np.array_equal(a, ncsn_loss(lambda v, s: -v, x, [1.0, 0.1], seed=2).numpy())


def test_bad_inputs():
    x = _normal([4, 3], 13)
    with pytest.raises(ValueError, match="score_fn output has shape"):
        score_matching_loss(lambda v: v[:, :2], x)
    with pytest.raises(ValueError, match="score_fn output has shape"):
        sliced_score_matching_loss(lambda v: tf.reduce_sum(v, 1), x, seed=0)
    with pytest.raises(TypeError, match="x must be a floating"):
        denoising_score_matching_loss(lambda v: v, tf.constant([[1, 2]]), 0.1, seed=0)
    with pytest.raises(ValueError, match="x contains NaN"):
        ncsn_loss(lambda v, s: v, tf.constant([[np.nan, 1.0]]), [1.0], seed=0)
    with pytest.raises(ValueError, match="x must have shape"):
        score_matching_loss(lambda v: v, tf.constant([1.0, 2.0]))
    with pytest.raises(ValueError, match="num_projections"):
        sliced_score_matching_loss(lambda v: v, x, 0, seed=0)
    with pytest.raises(ValueError, match="projection"):
        sliced_score_matching_loss(lambda v: v, x, 1, seed=0, projection="sphere")
    with pytest.raises(ValueError, match="sigma must be"):
        denoising_score_matching_loss(lambda v: v, x, 0.0, seed=0)
    with pytest.raises(ValueError, match="sigmas"):
        ncsn_loss(lambda v, s: v, x, [1.0, -0.1], seed=0)
