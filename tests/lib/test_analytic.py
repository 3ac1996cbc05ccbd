"""The oracles themselves: the mixture's score is the gradient of its log density."""

import math

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from diffusion_lib.analytic import GaussianMixture


@pytest.fixture(scope="module")
def mixture():
    return GaussianMixture([1.0, 3.0, 2.0], [[0.0, 0.0], [3.0, -1.0], [-2.0, 4.0]], [0.5, 1.0, 0.8])


def _scipy_log_prob(mixture, x, sigma=0.0):
    """Isotropic components factor into univariate normals: sum of per-coordinate logpdfs."""
    per_component = [
        math.log(w) + stats.norm(m, math.sqrt(s**2 + sigma**2)).logpdf(x).sum(axis=1)
        for w, m, s in zip(mixture.weights, mixture.means, mixture.stds, strict=True)
    ]
    return np.logaddexp.reduce(np.stack(per_component), axis=0)


def test_log_prob_matches_scipy(mixture):
    x = np.random.default_rng(0).normal(size=[50, 2]) * 3
    np.testing.assert_allclose(
        mixture.log_prob(tf.constant(x)).numpy(), _scipy_log_prob(mixture, x), rtol=1e-12
    )
    np.testing.assert_allclose(
        mixture.log_prob(tf.constant(x), 0.7).numpy(), _scipy_log_prob(mixture, x, 0.7), rtol=1e-12
    )


@pytest.mark.parametrize("sigma", [None, 0.3, 5.0])
def test_score_is_the_gradient_of_log_prob(mixture, sigma):
    x = tf.constant(np.random.default_rng(1).normal(size=[30, 2]) * 4)
    with tf.GradientTape() as tape:
        tape.watch(x)
        logp = mixture.log_prob(x, sigma)
    np.testing.assert_allclose(
        mixture.score(x, sigma).numpy(), tape.gradient(logp, x).numpy(), rtol=1e-10, atol=1e-12
    )


def test_samples_have_the_mixture_moments(mixture):
    points, labels = mixture.sample(200_000, seed=2)
    np.testing.assert_allclose(np.bincount(labels) / 200_000, mixture.weights, atol=0.005)
    mean = (mixture.weights[:, None] * mixture.means).sum(0)
    assert np.all(np.abs(points.mean(0) - mean) < 5 * points.std(0) / math.sqrt(200_000))
    np.testing.assert_array_equal(points, mixture.sample(200_000, seed=2)[0])


def test_bad_arguments():
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture([0.0, 1.0], [[0.0], [1.0]], [1.0, 1.0])
    with pytest.raises(ValueError, match="means"):
        GaussianMixture([1.0, 1.0], [[0.0, 1.0]], [1.0, 1.0])
    with pytest.raises(ValueError, match=r"x must have shape \[B, 2\]"):
        GaussianMixture([1.0], [[0.0, 1.0]], [1.0]).score(tf.zeros([3, 3]))
