"""Score SDEs against closed forms: each SDE's marginal solves its own moment equations, the
discrete chains are DDPM's and NCSN's schedules, the Gaussian oracle's score is the gradient of
its density, and the probability-flow likelihood equals the density the model defines."""

import math

import numpy as np
import pytest
import tensorflow as tf

from diffusion_lib.analytic import GaussianData
from diffusion_lib.diffusion import GaussianDiffusion
from diffusion_lib.normalizer import IMAGES
from diffusion_lib.schedules import beta_schedule, sigma_schedule
from diffusion_lib.sde import (
    VESDE,
    VPSDE,
    SubVPSDE,
    clip_data_prediction,
    data_prediction,
    make_sde,
    sde_from_dict,
    ve_sde_of,
    vp_sde_of,
)
from diffusion_lib.sde_likelihood import bits_per_dim, dequantize, ode_log_likelihood

SDES = [VPSDE(), SubVPSDE(), VESDE(sigma_min=0.01, sigma_max=10.0)]
IDS = ["vp", "subvp", "ve"]
DATA = GaussianData([1.0, -0.5], [[0.5, 0.2], [0.2, 0.3]])


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_marginals_solve_the_moment_equations_of_the_sde(sde):
    """For dx = d(t) x dt + g dw: d log alpha / dt = d(t) and d var / dt = 2 d var + g^2, checked
    by central differences at five times (relative error 1e-6); VE carries its sigma_min^2 from
    t = 0, the others start at var 0, alpha 1."""
    t = np.array([0.05, 0.2, 0.5, 0.8, 0.95])
    h = 1e-5
    alpha, std = (v.numpy() for v in sde.marginal(t))
    a_plus, s_plus = (v.numpy() for v in sde.marginal(t + h))
    a_minus, s_minus = (v.numpy() for v in sde.marginal(t - h))
    d = sde._drift_coeff(tf.constant(t)).numpy()
    g2 = sde.diffusion(t).numpy() ** 2
    np.testing.assert_allclose((np.log(a_plus) - np.log(a_minus)) / (2 * h), d, atol=1e-6)
    dvar = (s_plus**2 - s_minus**2) / (2 * h)
    np.testing.assert_allclose(dvar, 2 * d * std**2 + g2, rtol=1e-6)
    a0, s0 = (float(v[0]) for v in sde.marginal(0.0))
    assert a0 == 1.0
    assert s0 == pytest.approx(0.01 if isinstance(sde, VESDE) else 0.0, abs=1e-15)


def test_the_discrete_chains_are_ddpm_and_ncsn_schedules():
    np.testing.assert_allclose(
        VPSDE().discrete_chain()["betas"], beta_schedule("linear", 1000, 1e-4, 0.02), rtol=1e-12
    )
    ve = VESDE(sigma_min=0.05, sigma_max=50.0, num_steps=100)
    np.testing.assert_allclose(
        ve.discrete_chain()["sigmas"][::-1], sigma_schedule(50.0, 0.05, 100), rtol=1e-12
    )
    diffusion = GaussianDiffusion(beta_schedule("linear", 1000, 1e-4, 0.02))
    assert vp_sde_of(diffusion).to_dict() == {
        "name": "vp",
        "num_steps": 1000,
        "beta_min": pytest.approx(0.1),
        "beta_max": pytest.approx(20.0),
    }
    with pytest.raises(ValueError, match="linear schedule"):
        vp_sde_of(GaussianDiffusion(beta_schedule("cosine", 1000, 1e-4, 0.02)))
    assert ve_sde_of(sigma_schedule(50.0, 0.05, 100)).sigma_max == pytest.approx(50.0)
    with pytest.raises(ValueError, match="geometric"):
        ve_sde_of(np.linspace(50.0, 0.05, 100))


def test_sdes_are_built_by_name_and_checked():
    assert isinstance(make_sde("subvp"), SubVPSDE)
    ve = sde_from_dict(VESDE(sigma_min=0.02, sigma_max=30.0).to_dict())
    assert (ve.sigma_min, ve.sigma_max, ve.N) == (0.02, 30.0, 1000)
    with pytest.raises(ValueError, match="sde must be one of"):
        make_sde("vpp")
    with pytest.raises(ValueError, match="beta_max must exceed beta_min"):
        VPSDE(beta_min=2.0, beta_max=1.0)
    with pytest.raises(ValueError, match="sigma_min must be a positive"):
        VESDE(sigma_min=0.0)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_prior_logp_is_the_gaussian_density(sde):
    z = tf.constant([[0.3, -1.2], [2.0, 0.1]], tf.float64)
    var = sde.prior_std**2
    expected = -np.log(2 * np.pi * var) - np.sum(z.numpy() ** 2, axis=1) / (2 * var)
    np.testing.assert_allclose(sde.prior_logp(z).numpy(), expected, rtol=1e-12)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_gaussian_oracle_score_is_the_gradient_of_its_density(sde):
    x = tf.constant(DATA.sample(6, 0), tf.float64)
    t = tf.constant([0.001, 0.1, 0.3, 0.5, 0.7, 1.0], tf.float64)
    with tf.GradientTape() as tape:
        tape.watch(x)
        logp = tf.reduce_sum(DATA.log_prob(sde, x, t))
    np.testing.assert_allclose(
        DATA.score_fn(sde)(x, t).numpy(), tape.gradient(logp, x).numpy(), rtol=1e-9
    )


def model_log_prob(sde, x, eps):
    """What a perfect score model defines at eps: the prior pulled back through the exact flow,
    log N(flow(x); 0, prior_std^2) + log |det d flow / dx| (the flow scales each eigen-direction
    of the data's covariance by sqrt(v_T / v_eps))."""
    latent = DATA.flow(sde, x, eps, sde.T)
    alpha_e, std_e = (float(v[0]) for v in sde.marginal(eps))
    alpha_t, std_t = (float(v[0]) for v in sde.marginal(sde.T))
    values = np.linalg.eigvalsh(DATA.cov)
    log_det = 0.5 * np.sum(
        np.log(alpha_t**2 * values + std_t**2) - np.log(alpha_e**2 * values + std_e**2)
    )
    return sde.prior_logp(latent).numpy() + log_det


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_ode_likelihood_with_the_exact_divergence_is_the_closed_form(sde):
    """Within 1e-4 bits/dim of the model's density (the bar is 1e-3), and the integral alone
    (the exact p_T in place of the prior) within 1e-4 of log p_eps; the prior's mismatch,
    p_T != N(0, prior_std^2), is what separates the two, and it is visible."""
    x = tf.constant(DATA.sample(8, 1), tf.float64)
    eps = sde.default_eps
    out = ode_log_likelihood(DATA.score_fn(sde), sde, x, divergence="exact", rtol=1e-8, atol=1e-8)
    bpd = lambda nats: nats / (2 * math.log(2))  # noqa: E731
    assert np.max(np.abs(bpd(out.log_prob - model_log_prob(sde, x, eps)))) < 1e-4
    exact_prior = DATA.log_prob(sde, out.latent, sde.T).numpy()
    closed = DATA.log_prob(sde, x, eps).numpy()
    assert np.max(np.abs(bpd(exact_prior + out.delta - closed))) < 1e-4
    np.testing.assert_allclose(out.latent, DATA.flow(sde, x, eps, sde.T).numpy(), atol=1e-6)
    assert out.evaluations > 10


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_likelihood_is_unbiased_within_its_standard_error(probe):
    """One point, 400 probes in one batch (each example its own probe): the estimates' mean is
    within 4 standard errors of the exact figure, their spread is not zero (probes differ), and
    another seed gives other probes."""
    sde = VPSDE()
    x = tf.constant(np.repeat(DATA.sample(1, 2), 400, axis=0), tf.float64)
    exact = model_log_prob(sde, x[:1], sde.default_eps)[0]
    out = ode_log_likelihood(DATA.score_fn(sde), sde, x, probe=probe, seed=3, rtol=1e-6, atol=1e-6)
    mean, se = out.log_prob.mean(), out.log_prob.std(ddof=1) / math.sqrt(400)
    assert se > 1e-3
    assert abs(mean - exact) < 4 * se, (mean, exact, se)
    tight = {"probe": probe, "rtol": 1e-6, "atol": 1e-6}
    again = ode_log_likelihood(DATA.score_fn(sde), sde, x[:4], seed=3, **tight)
    other = ode_log_likelihood(DATA.score_fn(sde), sde, x[:4], seed=4, **tight)
    np.testing.assert_allclose(again.log_prob, out.log_prob[:4], atol=1e-5)
    assert not np.allclose(other.log_prob, again.log_prob)


def test_bits_per_dim_and_dequantisation():
    """Uniform density on [-1, 1)^D mapped from v in [0, 1) (x = 2v - 1): log p_x = -D log 2,
    so 8 bits a dimension, exactly the entropy of uniform 8-bit pixels."""
    dim = 784
    log_p = np.array([-dim * math.log(2.0)])
    assert bits_per_dim(log_p, dim, dim * math.log(2.0))[0] == pytest.approx(8.0)
    v = dequantize(np.array([[0, 255, 128]]), seed=0)
    assert np.all((v >= np.array([0, 255, 128]) / 256) & (v < np.array([1, 256, 129]) / 256))
    with pytest.raises(ValueError, match="pixels must be integers"):
        dequantize(np.array([0.5]), seed=0)
    with pytest.raises(ValueError, match="divergence must be one of"):
        ode_log_likelihood(DATA.score_fn(VPSDE()), VPSDE(), np.zeros((1, 2)), divergence="trace")


def test_clipping_the_data_prediction_bounds_it_and_leaves_inner_points_alone():
    sde = VPSDE()
    score = DATA.score_fn(sde)
    clipped = clip_data_prediction(score, sde, -1.0, 1.0)
    x = tf.constant([[0.2, -0.1], [30.0, -30.0]], tf.float64)
    t = tf.constant([0.5, 0.5], tf.float64)
    x0 = data_prediction(sde, clipped(x, t), x, t).numpy()
    np.testing.assert_allclose(x0[1], [1.0, -1.0])
    inner = data_prediction(sde, score(x, t), x, t).numpy()[0]
    assert np.all(np.abs(inner) < 1)
    np.testing.assert_allclose(clipped(x, t).numpy()[0], score(x, t).numpy()[0], rtol=1e-12)


def test_images_dequantise_into_model_units_with_their_jacobian():
    pixels = np.array([[[[0], [255]], [[128], [7]]]], np.uint8)
    x, log_abs_scale = IMAGES.dequantized(pixels, seed=1)
    assert x.shape == pixels.shape and np.all((x >= -1) & (x < 1))
    np.testing.assert_array_equal(np.floor((x + 1) / 2 * 256), pixels)
    assert log_abs_scale == pytest.approx(4 * math.log(2.0))
