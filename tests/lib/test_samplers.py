"""Samplers against analytic scores and exact Gaussian-chain recursions; no training.

For data N(mu, s^2 I) the Bayes-optimal noise predictor is known, and with it every DDPM/DDIM
step is a linear-Gaussian map, so the exact mean and variance of the samples the chain produces
(including its discretisation error for few steps) follow from a scalar recursion derived here
independently of the library.
"""

import math

import numpy as np
import pytest
import tensorflow as tf

from diffusion_lib.analytic import GaussianMixture, optimal_eps_fn
from diffusion_lib.diffusion import GaussianDiffusion
from diffusion_lib.samplers import (
    SAMPLERS,
    annealed_langevin_dynamics,
    ddim_sample,
    ddim_timesteps,
    ddpm_sample,
    get_sampler,
    langevin_dynamics,
    technique4_step_lr,
)
from diffusion_lib.schedules import beta_schedule, sigma_schedule

MU, STD, N, D = 0.5, 0.5, 20_000, 2


@pytest.fixture(scope="module")
def diffusion():
    return GaussianDiffusion(beta_schedule("linear", 1000, 1e-4, 0.02))


def chain_moments(betas, timesteps, eta, mu, std):
    """Exact mean and variance of the final sample of DDIM (eta) on `timesteps`, x_T ~ N(0, 1).

    Tracks y = x - sqrt(abar_t) mu, which the optimal predictor maps linearly:
    pred_x0 = mu + sqrt(abar_t) s^2 y / v_t, pred_eps = sqrt(1 - abar_t) y / v_t,
    v_t = abar_t s^2 + 1 - abar_t.
    """
    abar_all = np.cumprod(1 - np.asarray(betas, np.float64))
    seq = list(timesteps)[::-1]
    m, var = -math.sqrt(abar_all[seq[0]]) * mu, 1.0
    for i, t in enumerate(seq):
        a_t = abar_all[t]
        a_s = abar_all[seq[i + 1]] if i + 1 < len(seq) else 1.0
        v_t = a_t * std**2 + 1 - a_t
        sigma2 = eta**2 * (1 - a_s) / (1 - a_t) * (1 - a_t / a_s)
        gain = (math.sqrt(a_s * a_t) * std**2 + math.sqrt((1 - a_s - sigma2) * (1 - a_t))) / v_t
        m, var = gain * m, gain**2 * var + sigma2
    return mu + m, var


def ancestral_moments(betas, mu, std):
    """Exact moments for DDPM Alg. 2 with beta~_t variance, from the posterior coefficients."""
    betas = np.asarray(betas, np.float64)
    abar = np.cumprod(1 - betas)
    m, var = -math.sqrt(abar[-1]) * mu, 1.0
    for t in range(len(betas) - 1, -1, -1):
        a_prev = abar[t - 1] if t > 0 else 1.0
        coef1 = betas[t] * math.sqrt(a_prev) / (1 - abar[t])
        coef2 = (1 - a_prev) * math.sqrt(1 - betas[t]) / (1 - abar[t])
        v_t = abar[t] * std**2 + 1 - abar[t]
        gain = coef1 * math.sqrt(abar[t]) * std**2 / v_t + coef2
        noise_var = betas[t] * (1 - a_prev) / (1 - abar[t]) if t > 0 else 0.0
        m, var = gain * m, gain**2 * var + noise_var
    return mu + m, var


def assert_moments(samples, mean, var):
    x = samples.numpy().astype(np.float64)
    n = x.size
    assert abs(x.mean() - mean) < 5 * math.sqrt(var / n), (x.mean(), mean)
    assert abs(x.var() - var) < 5 * var * math.sqrt(2 / n), (x.var(), var)


def test_ddpm_matches_the_data_distribution(diffusion):
    model = optimal_eps_fn(diffusion, MU, STD)
    result = ddpm_sample(model, diffusion, (N, D), seed=0)
    mean, var = ancestral_moments(diffusion.betas, MU, STD)
    # The exact chain is 1.6% under s^2 (0.2461 vs 0.25): the fixed beta~_t variance leaves out
    # Var(x_0 | x_t), IDDPM's reason to learn it. At N * D = 40,000 values that is inside the
    # Monte-Carlo tolerance (5 standard errors = 2.2%), so the samples match both.
    assert mean == pytest.approx(MU, abs=1e-3) and var == pytest.approx(STD**2, rel=0.02)
    assert_moments(result.samples, MU, STD**2)
    assert_moments(result.samples, mean, var)


@pytest.mark.parametrize(("eta", "num_steps"), [(0.0, 1000), (1.0, 1000), (0.0, 50), (1.0, 50)])
def test_ddim_matches_its_exact_chain_and_the_data(diffusion, eta, num_steps):
    model = optimal_eps_fn(diffusion, MU, STD)
    result = ddim_sample(model, diffusion, (N, D), seed=1, num_steps=num_steps, eta=eta)
    seq = ddim_timesteps(1000, num_steps)
    mean, var = chain_moments(diffusion.betas, seq, eta, MU, STD)
    assert_moments(result.samples, mean, var)
    if num_steps == 1000:
        assert_moments(result.samples, MU, STD**2)
    else:
        # 50 steps: the mean stays within 0.002 of mu, but the exact chain's variance is 11%
        # (eta = 0: 0.2227) and 21% (eta = 1: 0.1964) under s^2 = 0.25. That is discretisation
        # error of the sampler with big jumps, not Monte-Carlo noise; the samples match the
        # exact chain to within Monte-Carlo error, which is what says the sampler is right.
        assert mean == pytest.approx(MU, abs=2e-3)
        assert var == pytest.approx(STD**2, rel=0.25)


def test_ddim_eta_one_on_all_steps_is_ancestral_sampling(diffusion):
    model = optimal_eps_fn(diffusion, MU, STD)
    a = ddpm_sample(model, diffusion, (64, D), seed=7, dtype=tf.float64).samples.numpy()
    b = ddim_sample(model, diffusion, (64, D), seed=7, eta=1.0, dtype=tf.float64).samples.numpy()
    # Same seeds, same noise: the two samplers agree path by path, up to float64 rounding.
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)


def test_seeded_reproducibility_and_frames(diffusion):
    model = optimal_eps_fn(diffusion, MU, STD)
    first = ddim_sample(model, diffusion, (8, 3), seed=3, num_steps=20, eta=0.5, frames=5)
    again = ddim_sample(model, diffusion, (8, 3), seed=3, num_steps=20, eta=0.5, frames=5)
    other = ddim_sample(model, diffusion, (8, 3), seed=4, num_steps=20, eta=0.5)
    np.testing.assert_array_equal(first.samples.numpy(), again.samples.numpy())
    assert not np.allclose(first.samples.numpy(), other.samples.numpy())
    assert first.frames.shape == (5, 8, 3) and first.frame_steps == (0, 5, 10, 15, 20)
    np.testing.assert_array_equal(first.frames[-1].numpy(), first.samples.numpy())
    start = tf.random.stateless_normal([8, 3], [9, 9])
    given = ddpm_sample(model, diffusion, noise=start, seed=3, frames=[0, 1000])
    np.testing.assert_array_equal(given.frames[0].numpy(), start.numpy())


def test_clip_x0_bounds_the_samples(diffusion):
    model = optimal_eps_fn(diffusion, 3.0, 0.5)  # data far outside [-1, 1]
    for result in (
        ddpm_sample(model, diffusion, (256, 2), seed=0, clip_x0=(-1.0, 1.0)),
        ddim_sample(model, diffusion, (256, 2), seed=0, num_steps=25, clip_x0=(-1.0, 1.0)),
    ):
        assert float(tf.reduce_max(tf.abs(result.samples))) <= 1.0 + 1e-6


def test_ddim_timestep_sequences():
    seq = ddim_timesteps(1000, 50)
    assert seq[0] == 0 and seq[-1] == 999 and len(seq) == 50 and np.all(np.diff(seq) > 0)
    quad = ddim_timesteps(1000, 50, "quad")
    assert quad[-1] == 999 and np.all(np.diff(quad) > 0) and np.diff(quad)[0] < np.diff(quad)[-1]
    assert ddim_timesteps(10, 10, "quad").tolist() == list(range(10))


def test_langevin_reaches_the_exact_stationary_law_of_its_discretisation():
    """For a Gaussian target N(m, s^2) the unadjusted chain x' = x + h/2 s(x) + sqrt(h) z is
    AR(1) with stationary variance h / (1 - (1 - h / (2 s^2))^2), slightly above s^2."""
    m, s, h = 1.5, 0.8, 0.05
    x0 = tf.zeros([N, D])
    result = langevin_dynamics(lambda x: -(x - m) / s**2, x0, h, 2000, seed=5)
    assert_moments(result.samples, m, h / (1 - (1 - h / (2 * s**2)) ** 2))


def test_annealed_langevin_recovers_mixture_weights_where_plain_langevin_does_not():
    """Song & Ermon 2019, sec. 3.2 / Fig. 3: 1/5 N((-5,-5), I) + 4/5 N((5,5), I)."""
    mixture = GaussianMixture([0.2, 0.8], [[-5.0, -5.0], [5.0, 5.0]], [1.0, 1.0])
    start = tf.random.stateless_uniform([5000, 2], [1, 2], -8.0, 8.0)
    plain = langevin_dynamics(lambda x: mixture.score(x), start, 0.1, 2000, seed=0)
    annealed = annealed_langevin_dynamics(
        lambda x, sigma: mixture.score(x, sigma),
        start,
        sigma_schedule(20.0, 1.0, 20),
        100,
        0.1,
        seed=0,
    )
    plain_weight = float(np.mean(plain.samples.numpy().sum(axis=1) < 0))
    annealed_weight = float(np.mean(annealed.samples.numpy().sum(axis=1) < 0))
    assert abs(annealed_weight - 0.2) < 0.03, annealed_weight
    assert plain_weight > 0.35, plain_weight  # stuck near the 50/50 split of the uniform start


def annealed_moments(sigmas, steps_per_level, step_lr, mean0, var0, m, s):
    """Exact per-level mean and variance of NCSNv2's annealed chain on data N(m, s^2).

    The level-sigma score of that data is -(x - m) / v, v = s^2 + sigma^2, so a step
    x' = x + a s(x) + sqrt(2 a) z is AR(1): the deviation from m shrinks by c = 1 - a / v and the
    variance goes to c^2 var + 2 a, a = step_lr sigma^2 / sigma_L^2. Returns [(mean, var)] at
    the end of each level."""
    dev, var, out = mean0 - m, var0, []
    for sigma in sigmas:
        a = step_lr * sigma**2 / sigmas[-1] ** 2
        c = 1.0 - a / (s**2 + sigma**2)
        for _ in range(steps_per_level):
            dev, var = c * dev, c**2 * var + 2.0 * a
        out.append((m + dev, var))
    return out


def test_annealed_langevin_moves_the_chain_by_ncsnv2s_step():
    """Closed-form mean and variance after every level, at steps large enough that the other
    convention (a/2 and sqrt(a), NCSN's printed form) would miss both by far: after the first
    level its mean would sit at 1.84 instead of 1.11 here."""
    m, s, sigmas, spl, step_lr = 0.5, 0.5, [2.0, 1.0, 0.5], 3, 0.1
    start = 3.0 + tf.random.stateless_normal([N, D], [7, 8], dtype=tf.float64)
    expected = annealed_moments(sigmas, spl, step_lr, 3.0, 1.0, m, s)
    score = lambda x, sigma: -(x - m) / (s**2 + sigma[:, None] ** 2)  # noqa: E731
    result = annealed_langevin_dynamics(score, start, sigmas, spl, step_lr, seed=2)
    assert_moments(result.samples, *expected[-1])
    for level, (mean, var) in zip(result.health, expected, strict=True):
        assert level.rms == pytest.approx(math.sqrt(mean**2 + var), rel=0.01)
        assert level.expected_rms == pytest.approx(math.hypot(1.0, level.sigma))
    wrong = annealed_moments(sigmas, spl, step_lr / 2, 3.0, 1.0, m, s)  # the paper's printed form
    assert abs(wrong[0][0] - expected[0][0]) > 0.5  # the check above could tell them apart


def test_chain_health_flags_a_chain_that_lags_behind_its_schedule():
    """Data N(0, 0.1^2) from sigma 10 down to 0.1 (exact moments by `annealed_moments`): stepped
    as technique 4 would, the chain carries 1.05-1.31x the RMS it should at every level; at a
    100x smaller step_lr it keeps the starting noise and ends 66x above it."""
    s, sigmas, spl = 0.1, sigma_schedule(10.0, 0.1, 10), 5
    score = lambda x, sigma: -x / (s**2 + sigma[:, None] ** 2)  # noqa: E731
    start = tf.random.stateless_normal([4000, 16], [1, 1]) * 10.0
    for step_lr, low, high in ((2e-3, 1.0, 1.35), (2e-5, 0.95, 70.0)):
        result = annealed_langevin_dynamics(score, start, sigmas, spl, step_lr, seed=3, data_rms=s)
        exact = annealed_moments(sigmas, spl, step_lr, 0.0, 100.0, 0.0, s)
        assert [level.sigma for level in result.health] == pytest.approx(list(sigmas))
        for level, (_, var) in zip(result.health, exact, strict=True):
            assert level.rms == pytest.approx(math.sqrt(var), rel=0.02)
            assert low < level.ratio < high, result.health
        if step_lr < 1e-3:
            assert result.health[-1].ratio > 30.0  # lagging: unmistakable in the figure


def test_technique4_reproduces_ncsnv2_and_keeps_the_chain_at_each_level():
    """NCSNv2's CIFAR-10 setting (232 levels from 50 to 0.01, 5 steps) is step_lr 6.2e-6; and
    on data of tiny spread the exact chain at that step_lr ends the last level within 10% of its
    sigma (gamma 1.17 here), while half or double the step does worse at the last level."""
    cifar = sigma_schedule(50.0, 0.01, 232)
    assert technique4_step_lr(cifar, 5) == pytest.approx(6.2e-6, rel=0.01)
    sigmas, spl, s = sigma_schedule(1.0, 0.01, 30), 5, 1e-4
    best = technique4_step_lr(sigmas, spl)

    def last_ratio(step_lr):
        exact = annealed_moments(sigmas, spl, step_lr, 0.0, sigmas[0] ** 2, 0.0, s)
        return math.sqrt(exact[-1][1]) / sigmas[-1]

    assert 1.0 < last_ratio(best) < 1.1
    assert last_ratio(best / 2) > last_ratio(best) and last_ratio(best * 2) > last_ratio(best)
    with pytest.raises(ValueError, match="steps_per_level"):
        technique4_step_lr(sigmas, 0)


def test_final_denoising_step_is_tweedie():
    """Data N(0, s^2): the chain targets N(0, s^2 + sigma_L^2); the denoising step scales by
    s^2 / (s^2 + sigma_L^2), giving variance s^4 / (s^2 + sigma_L^2)."""
    s, sigma_l = 1.0, 0.5
    score = lambda x, sigma: -x / (s**2 + sigma[:, None] ** 2)  # noqa: E731
    start = tf.random.stateless_normal([N, D], [3, 4]) * math.sqrt(s**2 + sigma_l**2)
    plain = annealed_langevin_dynamics(score, start, [sigma_l], 1, 1e-4, seed=1)
    final = annealed_langevin_dynamics(score, start, [sigma_l], 1, 1e-4, seed=1, denoise_final=True)
    np.testing.assert_allclose(
        final.samples.numpy(), plain.samples.numpy() * s**2 / (s**2 + sigma_l**2), rtol=1e-5
    )
    assert_moments(final.samples, 0.0, s**4 / (s**2 + sigma_l**2))


def test_registry():
    assert {"ddpm", "ddim", "langevin", "annealed_langevin"} <= set(SAMPLERS)
    assert get_sampler("ddim").family == "diffusion" and get_sampler("langevin").family == "score"
    with pytest.raises(ValueError, match="sampler must be one of"):
        get_sampler("euler")


def test_bad_inputs(diffusion):
    model = optimal_eps_fn(diffusion, MU, STD)
    with pytest.raises(ValueError, match="eta"):
        ddim_sample(model, diffusion, (2, 2), seed=0, eta=1.5)
    with pytest.raises(ValueError, match="timesteps must be strictly increasing"):
        ddim_sample(model, diffusion, (2, 2), seed=0, timesteps=[5, 3, 900])
    with pytest.raises(ValueError, match="num_steps"):
        ddim_sample(model, diffusion, (2, 2), seed=0, num_steps=1001)
    with pytest.raises(ValueError, match="shape"):
        ddpm_sample(model, diffusion, (4,), seed=0)
    with pytest.raises(ValueError, match="noise contains NaN"):
        ddpm_sample(model, diffusion, noise=tf.fill([2, 2], np.nan), seed=0)
    with pytest.raises(ValueError, match="model output has shape"):
        ddim_sample(lambda x, t: x[:, :1], diffusion, (2, 2), seed=0, num_steps=3)
    with pytest.raises(ValueError, match="step_size"):
        langevin_dynamics(lambda x: -x, tf.zeros([2, 2]), -0.1, 10, seed=0)
    with pytest.raises(ValueError, match="score_fn output has shape"):
        langevin_dynamics(lambda x: -x[:, :1], tf.zeros([2, 2]), 0.1, 10, seed=0)
    with pytest.raises(TypeError, match="x must be a floating"):
        langevin_dynamics(lambda x: -x, tf.zeros([2, 2], tf.int32), 0.1, 10, seed=0)
    with pytest.raises(ValueError, match="sigmas must be non-increasing"):
        annealed_langevin_dynamics(lambda x, s: -x, tf.zeros([2, 2]), [0.1, 1.0], 10, 0.1, seed=0)
    with pytest.raises(ValueError, match="step_lr must be below 2"):
        annealed_langevin_dynamics(lambda x, s: -x, tf.zeros([2, 2]), [1.0, 0.05], 10, 0.01, seed=0)
    with pytest.raises(TypeError, match="seed"):
        langevin_dynamics(lambda x: -x, tf.zeros([2, 2]), 0.1, 10, seed=None)
    with pytest.raises(ValueError, match="frames"):
        ddim_sample(model, diffusion, (2, 2), seed=0, num_steps=3, frames=[0, 7])


def test_sampling_split_over_two_replicas(diffusion):
    """Two logical CPUs: each replica runs half the batch; the samples keep the data law."""
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    model = optimal_eps_fn(diffusion, MU, STD)
    result = ddim_sample(
        model, diffusion, (N, D), seed=1, num_steps=50, strategy=strategy, frames=3
    )
    mean, var = chain_moments(diffusion.betas, ddim_timesteps(1000, 50), 0.0, MU, STD)
    assert result.samples.shape == (N, D) and result.frames.shape == (3, N, D)
    assert_moments(result.samples, mean, var)
    # eta = 0 is deterministic given the start: the split changes nothing but the batching.
    single = ddim_sample(model, diffusion, (N, D), seed=1, num_steps=50)
    np.testing.assert_allclose(result.samples.numpy(), single.samples.numpy(), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="not divisible by 2 replicas"):
        ddim_sample(model, diffusion, (3, D), seed=1, num_steps=5, strategy=strategy)
