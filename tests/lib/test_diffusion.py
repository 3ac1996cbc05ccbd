"""GaussianDiffusion against independent float64 derivations."""

import math

import numpy as np
import pytest
import tensorflow as tf

from diffusion_lib.analytic import optimal_eps_fn
from diffusion_lib.diffusion import GaussianDiffusion
from diffusion_lib.likelihoods import discretized_gaussian_log_likelihood
from diffusion_lib.schedules import beta_schedule

T = 200


@pytest.fixture(scope="module")
def diffusion():
    return GaussianDiffusion(beta_schedule("linear", T, 1e-4, 0.02))


def _x(shape, seed=0):
    return tf.constant(np.random.default_rng(seed).normal(size=shape))


def test_alphas_cumprod_is_the_running_product(diffusion):
    betas = beta_schedule("linear", T, 1e-4, 0.02)
    running, expected = 1.0, []
    for b in betas:
        running *= 1.0 - b
        expected.append(running)
    np.testing.assert_allclose(diffusion.alphas_cumprod, expected, rtol=1e-13)
    assert diffusion.alphas_cumprod_prev[0] == 1.0
    np.testing.assert_array_equal(diffusion.alphas_cumprod_prev[1:], diffusion.alphas_cumprod[:-1])


def test_posterior_matches_gaussian_conditioning(diffusion):
    """q(x_{t-1} | x_t, x_0) from Bayes' rule in precision form, derived independently."""
    x0, xt = _x([16, 3], 1), _x([16, 3], 2)
    t = np.arange(1, T, T // 16)[:16].astype(np.int32)
    mean, var, logvar = diffusion.q_posterior_mean_variance(x0, xt, t)
    betas = beta_schedule("linear", T, 1e-4, 0.02)
    abar = np.cumprod(1 - betas)
    for row, step in enumerate(t):
        alpha, abar_prev = 1 - betas[step], abar[step - 1]
        precision = alpha / betas[step] + 1 / (1 - abar_prev)
        v = 1 / precision
        m = v * (
            math.sqrt(alpha) * xt.numpy()[row] / betas[step]
            + math.sqrt(abar_prev) * x0.numpy()[row] / (1 - abar_prev)
        )
        np.testing.assert_allclose(var.numpy()[row], v, rtol=1e-11)
        np.testing.assert_allclose(mean.numpy()[row], m, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(logvar.numpy()[row], math.log(v), rtol=1e-12)
    # At t = 0 the posterior is a point mass at x_0; the log variance is clipped to beta~_1's.
    mean0, var0, logvar0 = diffusion.q_posterior_mean_variance(x0, xt, np.zeros(16, np.int32))
    np.testing.assert_allclose(mean0.numpy(), x0.numpy(), rtol=1e-12)
    np.testing.assert_allclose(var0.numpy(), 0.0, atol=0)
    np.testing.assert_allclose(
        logvar0.numpy(), math.log(diffusion.posterior_variance[1]), rtol=1e-12
    )


def test_q_sample_moments_and_q_mean_variance(diffusion):
    x0 = tf.fill([200_000, 1], 0.7)
    t = tf.fill([200_000], 120)
    noise = tf.random.stateless_normal([200_000, 1], [1, 2], dtype=tf.float32)
    xt = diffusion.q_sample(x0, t, noise).numpy()
    abar = diffusion.alphas_cumprod[120]
    n = xt.size
    assert abs(xt.mean() - math.sqrt(abar) * 0.7) < 5 * math.sqrt((1 - abar) / n)
    assert abs(xt.var() - (1 - abar)) < 5 * (1 - abar) * math.sqrt(2 / n)
    mean, var, logvar = diffusion.q_mean_variance(tf.constant([[0.7]], tf.float64), [120])
    assert mean.numpy().item() == pytest.approx(math.sqrt(abar) * 0.7, rel=1e-14)
    assert var.numpy().item() == pytest.approx(1 - abar, rel=1e-14)
    assert logvar.numpy().item() == pytest.approx(math.log(1 - abar), rel=1e-14)


@pytest.mark.parametrize("rank_shape", [[5, 2], [5, 4, 4, 3]])
def test_parametrisations_invert_q_sample(diffusion, rank_shape):
    x0, noise = _x(rank_shape, 3), _x(rank_shape, 4)
    t = tf.constant([0, 1, 50, 150, T - 1], tf.int32)
    xt = diffusion.q_sample(x0, t, noise)
    np.testing.assert_allclose(
        diffusion.predict_x0_from_eps(xt, t, noise).numpy(), x0.numpy(), atol=1e-10
    )
    np.testing.assert_allclose(
        diffusion.predict_eps_from_x0(xt, t, x0).numpy(), noise.numpy(), atol=1e-9
    )
    v = diffusion.v_target(x0, t, noise)
    np.testing.assert_allclose(
        diffusion.predict_x0_from_v(xt, t, v).numpy(), x0.numpy(), atol=1e-12
    )


@pytest.mark.parametrize("mean_type", ["eps", "x0", "v"])
def test_p_mean_variance_with_the_true_target_is_the_posterior(mean_type):
    d = GaussianDiffusion(beta_schedule("cosine", T), model_mean_type=mean_type)
    x0, noise = _x([6, 3], 5), _x([6, 3], 6)
    t = tf.constant([1, 2, 30, 99, 150, T - 1], tf.int32)
    xt = d.q_sample(x0, t, noise)
    target = {"eps": noise, "x0": x0, "v": d.v_target(x0, t, noise)}[mean_type]
    out = d.p_mean_variance(lambda x, s: target, xt, t)
    mean, var, logvar = d.q_posterior_mean_variance(x0, xt, t)
    np.testing.assert_allclose(out.mean.numpy(), mean.numpy(), atol=1e-9)
    np.testing.assert_allclose(out.variance.numpy(), var.numpy(), rtol=1e-12)
    np.testing.assert_allclose(out.pred_x0.numpy(), x0.numpy(), atol=1e-9)
    np.testing.assert_allclose(out.pred_noise.numpy(), noise.numpy(), atol=1e-7)


def test_variance_types(diffusion):
    xt, t = _x([3, 2], 7), tf.constant([0, 10, T - 1], tf.int32)
    eps = tf.zeros_like(xt)
    large = GaussianDiffusion(diffusion.betas, model_var_type="fixed_large")
    out = large.p_mean_variance(lambda x, s: eps, xt, t)
    np.testing.assert_allclose(
        out.variance.numpy()[:, 0],
        [diffusion.posterior_variance[1], diffusion.betas[10], diffusion.betas[T - 1]],
        rtol=1e-12,
    )
    learned = GaussianDiffusion(diffusion.betas, model_var_type="learned_range")
    small = diffusion.p_mean_variance(lambda x, s: eps, xt, t)
    at_min = learned.p_mean_variance(lambda x, s: tf.concat([eps, -tf.ones_like(eps)], -1), xt, t)
    at_max = learned.p_mean_variance(lambda x, s: tf.concat([eps, tf.ones_like(eps)], -1), xt, t)
    np.testing.assert_allclose(at_min.log_variance.numpy(), small.log_variance.numpy(), rtol=1e-12)
    np.testing.assert_allclose(
        at_max.variance.numpy()[1:, 0], diffusion.betas[[10, T - 1]], rtol=1e-12
    )
    np.testing.assert_allclose(at_min.mean.numpy(), small.mean.numpy(), rtol=1e-12)


def test_simple_loss_is_zero_for_the_perfect_noise_predictor_and_positive_otherwise(diffusion):
    x0, noise = _x([8, 5], 8), _x([8, 5], 9)
    t = tf.constant(np.arange(8) * 20, tf.int32)
    terms = diffusion.training_losses(lambda x, s: noise, x0, t, noise)
    assert terms.loss.shape == (8,)
    np.testing.assert_allclose(terms.loss.numpy(), 0.0, atol=0)
    off = diffusion.training_losses(lambda x, s: noise + 0.1, x0, t, noise)
    np.testing.assert_allclose(off.loss.numpy(), 0.01, rtol=1e-12)


def test_vlb_terms_vanish_for_the_exact_denoiser_of_a_point_mass():
    """Data a single grid value: the optimal predictor recovers x_0 exactly, every KL term is 0,
    and the bound reduces to prior + decoder NLL, both known in closed form."""
    d = GaussianDiffusion(beta_schedule("linear", 100, 1e-4, 0.02), loss_type="vlb")
    value = 2 * 100 / 255 - 1
    x0 = tf.fill([4, 3], tf.constant(value, tf.float64))
    model = optimal_eps_fn(d, value, 0.0)
    bpd = d.bits_per_dim(model, x0, seed=3)
    np.testing.assert_allclose(bpd.vb.numpy()[:, 1:], 0.0, atol=1e-9)
    scale = math.sqrt(d.posterior_variance[1])
    decoder = -float(
        discretized_gaussian_log_likelihood(
            tf.constant(value, tf.float64),
            tf.constant(value, tf.float64),
            tf.constant(math.log(scale), tf.float64),
        )
    ) / math.log(2)
    half_bin = 1 / 255 / scale
    decoder_closed = -math.log2(math.erf(half_bin / math.sqrt(2)))
    assert decoder == pytest.approx(decoder_closed, rel=1e-9)
    np.testing.assert_allclose(bpd.vb.numpy()[:, 0], decoder_closed, rtol=1e-6)
    abar_T = d.alphas_cumprod[-1]
    prior = 0.5 * (abar_T * value**2 + (1 - abar_T) - 1 - math.log(1 - abar_T)) / math.log(2)
    np.testing.assert_allclose(bpd.prior.numpy(), prior, rtol=1e-9)
    np.testing.assert_allclose(bpd.total.numpy(), prior + decoder_closed, rtol=1e-6)
    # The vlb training loss at random t is T * L_t: T * decoder at t = 0, zero elsewhere.
    terms = d.training_losses(model, x0, tf.constant([0, 5, 50, 99]), _x([4, 3], 10))
    np.testing.assert_allclose(
        terms.loss.numpy(), [100 * decoder_closed, 0, 0, 0], rtol=1e-6, atol=1e-7
    )


def test_vlb_loss_is_an_unbiased_estimate_of_the_bound():
    d = GaussianDiffusion(beta_schedule("linear", 50, 1e-3, 0.2), loss_type="vlb")
    model = optimal_eps_fn(d, 0.2, 0.5)
    x0 = tf.constant(np.random.default_rng(11).normal(0.2, 0.5, size=[1, 2]))
    bound = d.bits_per_dim(model, tf.repeat(x0, 400, axis=0), seed=4)
    full_sum = tf.reduce_sum(bound.vb, axis=1).numpy()
    n = 4000
    t = d.sample_timesteps(n, seed=5)
    noise = tf.random.stateless_normal([n, 2], [6, 7], dtype=tf.float64)
    estimate = d.training_losses(model, tf.repeat(x0, n, axis=0), t, noise).loss.numpy()
    stderr = estimate.std() / math.sqrt(n) + full_sum.std() / math.sqrt(400)
    assert abs(estimate.mean() - full_sum.mean()) < 5 * stderr


def test_hybrid_loss_stops_the_mean_gradient_in_its_vlb_term():
    d = GaussianDiffusion(
        beta_schedule("linear", T), model_var_type="learned_range", loss_type="hybrid"
    )
    x0, noise = _x([4, 3], 12), _x([4, 3], 13)
    t = tf.constant([0, 3, 80, 190], tf.int32)
    mean_part = tf.Variable(tf.zeros([4, 3], tf.float64))
    var_part = tf.Variable(tf.fill([4, 3], tf.constant(0.3, tf.float64)))
    model = lambda x, s: tf.concat([mean_part, var_part], axis=-1)  # noqa: E731
    with tf.GradientTape(persistent=True) as tape:
        terms = d.training_losses(model, x0, t, noise)
        total = tf.reduce_sum(terms.loss)
        mse_only = tf.reduce_sum(terms.mse)
    np.testing.assert_allclose(
        tape.gradient(total, mean_part).numpy(),
        tape.gradient(mse_only, mean_part).numpy(),
        rtol=1e-12,
    )
    assert np.all(np.abs(tape.gradient(total, var_part).numpy()) > 0)
    np.testing.assert_allclose(
        terms.loss.numpy(), (terms.mse + 0.001 * terms.vlb).numpy(), rtol=1e-12
    )


def test_antithetic_timesteps_mirror(diffusion):
    t = diffusion.sample_timesteps(64, seed=1, antithetic=True).numpy()
    np.testing.assert_array_equal(t[:32] + t[32:], T - 1)
    plain = diffusion.sample_timesteps(20_000, seed=2).numpy()
    assert plain.min() == 0 and plain.max() == T - 1
    assert abs(plain.mean() - (T - 1) / 2) < 5 * T / math.sqrt(12 * 20_000)
    np.testing.assert_array_equal(plain, diffusion.sample_timesteps(20_000, seed=2).numpy())


def test_bad_inputs_give_clear_errors(diffusion):
    x0, noise, t = _x([4, 3], 0), _x([4, 3], 1), tf.constant([0, 1, 2, 3])
    with pytest.raises(ValueError, match=r"t must lie in \[0, 200\)"):
        diffusion.q_sample(x0, tf.constant([0, 1, 2, 200]), noise)
    with pytest.raises(TypeError, match="t must be an integer"):
        diffusion.q_sample(x0, tf.constant([0.0, 1, 2, 3]), noise)
    with pytest.raises(TypeError, match="x0 must be a floating"):
        diffusion.q_sample(tf.constant([[1, 2, 3]] * 4), t, noise)
    with pytest.raises(ValueError, match="t has batch 3 but x has batch 4"):
        diffusion.q_sample(x0, tf.constant([0, 1, 2]), noise)
    with pytest.raises(ValueError, match="noise has shape"):
        diffusion.q_sample(x0, t, _x([4, 1], 2))
    with pytest.raises(ValueError, match="x0 contains NaN"):
        diffusion.training_losses(lambda x, s: x, tf.constant(np.full([4, 3], np.nan)), t, noise)
    with pytest.raises(ValueError, match="model output has shape"):
        diffusion.training_losses(lambda x, s: x[:, :1], x0, t, noise)
    with pytest.raises(ValueError, match="betas"):
        GaussianDiffusion([0.1, 1.0])
    with pytest.raises(ValueError, match="'bogus' is not a valid ModelMeanType"):
        GaussianDiffusion([0.1], model_mean_type="bogus")


def test_errors_are_raised_inside_tf_function_too(diffusion):
    @tf.function
    def step(t):
        return diffusion.q_sample(tf.zeros([2, 2]), t, tf.zeros([2, 2]))

    with pytest.raises(tf.errors.InvalidArgumentError, match="t must be < 200"):
        step(tf.constant([0, 500]))


@pytest.mark.parametrize("mean_type", ["eps", "x0", "v"])
def test_min_snr_weighting_weighs_the_x0_error_by_min_snr(mean_type):
    """Hang et al. 2023: every target's weighted error equals min(SNR_t, 5) times the x_0 error.
    With a network that outputs zeros the errors are known: the loss at t is w_t * mean(target^2)
    with w_t = min(SNR, 5) / SNR (eps), min(SNR, 5) (x0), min(SNR, 5) / (SNR + 1) (v)."""
    betas = beta_schedule("linear", 1000, 1e-4, 0.02)
    plain = GaussianDiffusion(betas, model_mean_type=mean_type)
    weighted = GaussianDiffusion(betas, model_mean_type=mean_type, loss_weighting="min_snr")
    t = tf.constant([0, 100, 300, 999])
    x0 = tf.random.stateless_normal([4, 6], [1, 2], dtype=tf.float64)
    noise = tf.random.stateless_normal([4, 6], [3, 4], dtype=tf.float64)
    zeros = lambda x, t: tf.zeros_like(x)  # noqa: E731
    abar = plain.alphas_cumprod[t.numpy()]
    snr = abar / (1 - abar)
    expected_weight = {
        "eps": np.minimum(snr, 5) / snr,
        "x0": np.minimum(snr, 5),
        "v": np.minimum(snr, 5) / (snr + 1),
    }[mean_type]
    unweighted = plain.training_losses(zeros, x0, t, noise).loss.numpy()
    got = weighted.training_losses(zeros, x0, t, noise).loss.numpy()
    np.testing.assert_allclose(got, expected_weight * unweighted, rtol=1e-12)
    assert not np.allclose(expected_weight, 1.0)  # the check can tell weighted from not
