"""diffusion_lib/edm.py and the edm objective against closed forms: the preconditioning's
coefficients and their unit variances, the loss at the ideal denoiser of Gaussian data (the
posterior variance, weighted), and Heun's sampler through the objective's score-SDE view
reproducing N(mu, Sigma). (Its training through the engine: tests/lib/training/test_objectives.py.)"""

import numpy as np
import pytest
import tensorflow as tf

from diffusion_lib import edm
from diffusion_lib.analytic import GaussianData
from diffusion_lib.samplers import heun_sample as heun
from diffusion_lib.training import config_preset
from diffusion_lib.training.objectives import build_objective

pytestmark = pytest.mark.cost(10)

SIGMAS = np.array([0.002, 0.05, 0.5, 1.0, 3.0, 80.0])
DATA = GaussianData([0.5, -0.3, 1.0], [[1.0, 0.6, 0.1], [0.6, 0.8, -0.2], [0.1, -0.2, 0.5]])


@pytest.mark.parametrize("sigma_data", [0.5, 1.0])
def test_preconditioning_is_table_1(sigma_data):
    c_skip, c_out, c_in, c_noise = (c.numpy() for c in edm.preconditioning(SIGMAS, sigma_data))
    total = SIGMAS**2 + sigma_data**2
    np.testing.assert_allclose(c_skip, sigma_data**2 / total, rtol=1e-12)
    np.testing.assert_allclose(c_out, SIGMAS * sigma_data / np.sqrt(total), rtol=1e-12)
    np.testing.assert_allclose(c_in, 1 / np.sqrt(total), rtol=1e-12)
    np.testing.assert_allclose(c_noise, np.log(SIGMAS) / 4, rtol=1e-12)
    weight = edm.loss_weight(SIGMAS, sigma_data).numpy()
    np.testing.assert_allclose(weight, total / (SIGMAS * sigma_data) ** 2, rtol=1e-12)
    np.testing.assert_allclose(weight * c_out**2, 1.0, rtol=1e-12)  # lambda = 1 / c_out^2
    # For data of std sigma_data: F's input c_in (y + sigma n) and its regression target
    # (y - c_skip x) / c_out both have unit variance at every sigma.
    np.testing.assert_allclose(c_in**2 * total, 1.0, rtol=1e-12)
    target = (sigma_data**2 * (1 - c_skip) ** 2 + c_skip**2 * SIGMAS**2) / c_out**2
    np.testing.assert_allclose(target, 1.0, rtol=1e-10)


def test_the_ideal_denoiser_is_the_posterior_mean():
    """D = mu + Sigma (Sigma + sigma^2 I)^-1 (x - mu), against the matrix formula."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 3))
    sigma = np.array([0.1, 0.5, 1.0, 2.0, 10.0])
    got = DATA.denoiser(tf.constant(x), tf.constant(sigma)).numpy()
    for row, s in zip(range(5), sigma, strict=True):
        gain = DATA.cov @ np.linalg.inv(DATA.cov + s**2 * np.eye(3))
        np.testing.assert_allclose(got[row], DATA.mean + gain @ (x[row] - DATA.mean), atol=1e-12)


def _posterior_variance(sigma):
    """mean over dims of E||D(y + sigma n) - y||^2 = tr(Sigma - Sigma (Sigma + sigma^2)^-1 Sigma)."""
    values = np.linalg.eigvalsh(DATA.cov)
    return np.mean(values * sigma**2 / (values + sigma**2))


def _exact_network(sigma_data):
    """The network F whose preconditioned denoiser is the ideal one."""

    def network(x_in, sigma, **kw):
        sigma = tf.cast(sigma, tf.float64)
        c_skip, c_out, c_in, _ = edm.preconditioning(sigma, sigma_data)
        x = tf.cast(x_in, tf.float64) / c_in[:, None]
        return (DATA.denoiser(x, sigma) - c_skip[:, None] * x) / c_out[:, None]

    return network


@pytest.mark.parametrize("sigma", [0.02, 0.5, 4.0])
def test_loss_at_the_ideal_denoiser_is_the_weighted_posterior_variance(sigma):
    n = 200_000
    x = tf.constant(DATA.sample(n, 1))
    noise = tf.random.stateless_normal(x.shape, [3, 4], dtype=tf.float64)
    denoise = edm.denoiser(_exact_network(0.5), 0.5)
    losses = edm.denoiser_loss(denoise, x, tf.fill([n], sigma), noise, 0.5).numpy()
    expected = edm.loss_weight(sigma, 0.5).numpy() * _posterior_variance(sigma)
    error = losses.std() / np.sqrt(n)
    assert abs(losses.mean() - expected) < 4 * error, (losses.mean(), expected, error)


def test_objective_loss_is_the_log_normal_average_of_it(tmp_path):
    """The objective's loss at the exact network: E over ln sigma ~ N(-1.2, 1.2^2) of the
    weighted posterior variance (Gauss-Hermite, 80 nodes), within 4 standard errors."""
    config = config_preset("toy-edm", data_dir=str(tmp_path))
    objective = build_objective(config)
    n = 100_000
    x = tf.constant(DATA.sample(n, 2), tf.float32)
    losses = objective.losses(_exact_network(1.0), x, tf.constant([5, 6]), 0, n).numpy()
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)
    sigmas = np.exp(-1.2 + 1.2 * nodes)
    per_sigma = [edm.loss_weight(s, 1.0).numpy() * _posterior_variance(s) for s in sigmas]
    expected = np.dot(weights, per_sigma) / np.sqrt(2 * np.pi)
    error = losses.std() / np.sqrt(n)
    assert abs(losses.mean() - expected) < 4 * error, (losses.mean(), expected, error)


def test_heun_through_the_objective_reproduces_the_gaussian(tmp_path):
    """The exact network, read through the objective's VE view, sampled by Heun at 18 steps:
    mean within 0.05 and covariance within 12% (the tolerance of Heun with the exact score)."""
    objective = build_objective(config_preset("toy-edm", data_dir=str(tmp_path)))
    sde, score_fn = objective.sde_view(_exact_network(1.0))
    assert (sde.sigma_min, sde.sigma_max) == (0.002, 80.0)
    out = heun(score_fn, sde, (20_000, 3), seed=[7, 8], num_steps=18)
    samples = out.samples.numpy()
    assert out.evaluations == 35
    np.testing.assert_allclose(samples.mean(0), DATA.mean, atol=0.05)
    cov = np.cov(samples.T)
    assert np.max(np.abs(cov - DATA.cov)) < 0.12 * np.max(np.abs(DATA.cov)), cov
