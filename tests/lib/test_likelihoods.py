"""Gaussian KL and the discretized Gaussian likelihood against independent float64 oracles."""

import math

import mpmath
import numpy as np
import pytest
import tensorflow as tf
from scipy import integrate, special, stats

from diffusion_lib.likelihoods import discretized_gaussian_log_likelihood, normal_kl


def test_normal_kl_matches_textbook_form_and_numeric_integral():
    rng = np.random.default_rng(0)
    m1, m2 = rng.normal(size=20), rng.normal(size=20)
    s1, s2 = rng.uniform(0.2, 2.0, 20), rng.uniform(0.2, 2.0, 20)
    got = normal_kl(
        tf.constant(m1), tf.constant(2 * np.log(s1)), tf.constant(m2), tf.constant(2 * np.log(s2))
    ).numpy()
    textbook = np.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5
    np.testing.assert_allclose(got, textbook, rtol=1e-12, atol=1e-14)
    # One case by quadrature of p log(p/q).
    p, q = stats.norm(m1[0], s1[0]), stats.norm(m2[0], s2[0])
    numeric, _ = integrate.quad(lambda x: p.pdf(x) * (p.logpdf(x) - q.logpdf(x)), -30, 30)
    assert got[0] == pytest.approx(numeric, rel=1e-8)


def test_normal_kl_is_zero_for_equal_gaussians():
    m, lv = tf.constant([0.3, -2.0], tf.float64), tf.constant([0.1, -3.0], tf.float64)
    np.testing.assert_allclose(normal_kl(m, lv, m, lv).numpy(), 0.0, atol=1e-15)


def _oracle_log_prob(x, mean, scale, num_bins):
    """Bin probability in 60-digit arithmetic: no cancellation, no underflow."""
    with mpmath.workdps(60):
        h = mpmath.mpf(1) / (num_bins - 1)
        x, mean, scale = mpmath.mpf(float(x)), mpmath.mpf(float(mean)), mpmath.mpf(float(scale))
        upper, lower = (x - mean + h) / scale, (x - mean - h) / scale
        # Written with upper tails on the upper side: 1 - ncdf(big) would cancel to 0 at any precision.
        if x <= -1 + h / 2:
            p = mpmath.ncdf(upper)
        elif x >= 1 - h / 2:
            p = mpmath.ncdf(-lower)
        elif x < mean:
            p = mpmath.ncdf(upper) - mpmath.ncdf(lower)
        else:
            p = mpmath.ncdf(-lower) - mpmath.ncdf(-upper)
        return float(mpmath.log(p))


@pytest.mark.parametrize(("mean", "scale"), [(0.0, 0.01), (0.3, 0.2), (-0.9, 1.5), (0.995, 0.003)])
def test_discretized_likelihood_sums_to_one_over_the_grid(mean, scale):
    grid = np.linspace(-1.0, 1.0, 256)
    logp = discretized_gaussian_log_likelihood(
        tf.constant(grid),
        tf.constant(np.full(256, mean)),
        tf.constant(np.full(256, math.log(scale))),
    ).numpy()
    assert np.exp(logp).sum() == pytest.approx(1.0, abs=1e-12)
    expected = np.array([_oracle_log_prob(x, mean, scale, 256) for x in grid])
    # Bins whose probability is below 1e-300 fall off float64 in the oracle's exp, not its log.
    np.testing.assert_allclose(logp, expected, rtol=1e-9, atol=1e-11)


def test_discretized_likelihood_stays_finite_and_accurate_far_in_the_tails():
    # 12 standard deviations from the mean: Phi(u) - Phi(l) underflows a naive difference of CDFs
    # near 1, the log-space form keeps it.
    grid = np.linspace(-1, 1, 256)
    mean, scale = 0.0, 0.01
    x = grid[np.argmin(np.abs(grid - 0.12))]  # about 12 standard deviations above the mean
    got = float(
        discretized_gaussian_log_likelihood(
            tf.constant([x], tf.float64),
            tf.constant([mean], tf.float64),
            tf.constant([math.log(scale)], tf.float64),
        )[0]
    )
    expected = _oracle_log_prob(x, mean, scale, 256)
    assert np.isfinite(got)
    assert got == pytest.approx(expected, rel=1e-9)


def test_discretized_likelihood_rejects_one_bin():
    with pytest.raises(ValueError, match="num_bins"):
        discretized_gaussian_log_likelihood(tf.zeros([1]), tf.zeros([1]), tf.zeros([1]), num_bins=1)


@pytest.mark.parametrize("dtype", [tf.float32, tf.float64])
def test_log_ndtr_matches_scipy_in_both_tails(dtype):
    from diffusion_lib.likelihoods import log_ndtr

    x = np.concatenate([np.linspace(-60, -5, 300), np.linspace(-5, 10, 300)])
    got = log_ndtr(tf.constant(x, dtype)).numpy().astype(np.float64)
    rtol = 1e-10 if dtype == tf.float64 else 2e-5
    expected = special.log_ndtr(x)
    np.testing.assert_allclose(
        got, expected, rtol=rtol, atol=1e-12 if dtype == tf.float64 else 1e-6
    )
    with tf.GradientTape() as tape:
        xt = tf.constant(x, dtype)
        tape.watch(xt)
        y = log_ndtr(xt)
    assert np.all(np.isfinite(tape.gradient(y, xt).numpy()))
