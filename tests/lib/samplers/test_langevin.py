"""Plain and annealed Langevin dynamics against analytic scores: stationary laws, the mixture
weights of NCSN's Fig. 3, the NCSNv2 step, chain health, technique 4 and the final denoising step."""

import math

import numpy as np
import pytest
import tensorflow as tf

from diffusion_lib.analytic import GaussianMixture
from diffusion_lib.samplers import (
    annealed_langevin_dynamics,
    langevin_dynamics,
    technique4_step_lr,
)
from diffusion_lib.schedules import sigma_schedule
from tests.lib.samplers.gaussian_chains import (
    D,
    N,
    assert_moments,
)

pytestmark = pytest.mark.cost(15)


def test_langevin_reaches_the_exact_stationary_law_of_its_discretisation():
    """For a Gaussian target N(m, s^2) the unadjusted chain x' = x + h/2 s(x) + sqrt(h) z is
    AR(1) with stationary variance h / (1 - (1 - h / (2 s^2))^2), slightly above s^2."""
    m, s, h = 1.5, 0.8, 0.05
    x0 = tf.zeros([N, D])
    result = langevin_dynamics(lambda x: -(x - m) / s**2, x0, step_size=h, num_steps=2000, seed=5)
    assert_moments(result.samples, m, h / (1 - (1 - h / (2 * s**2)) ** 2))


def test_annealed_langevin_recovers_mixture_weights_where_plain_langevin_does_not():
    """Song & Ermon 2019, sec. 3.2 / Fig. 3: 1/5 N((-5,-5), I) + 4/5 N((5,5), I)."""
    mixture = GaussianMixture([0.2, 0.8], [[-5.0, -5.0], [5.0, 5.0]], [1.0, 1.0])
    start = tf.random.stateless_uniform([5000, 2], [1, 2], -8.0, 8.0)
    plain = langevin_dynamics(
        lambda x: mixture.score(x), start, step_size=0.1, num_steps=2000, seed=0
    )
    annealed = annealed_langevin_dynamics(
        lambda x, sigma: mixture.score(x, sigma),
        start,
        sigma_schedule(20.0, 1.0, 20),
        steps_per_level=100,
        step_lr=0.1,
        seed=0,
        denoise_final=False,
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
    result = annealed_langevin_dynamics(
        score, start, sigmas, steps_per_level=spl, step_lr=step_lr, seed=2, denoise_final=False
    )
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
        result = annealed_langevin_dynamics(
            score,
            start,
            sigmas,
            steps_per_level=spl,
            step_lr=step_lr,
            seed=3,
            data_rms=s,
            denoise_final=False,
        )
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
    plain = annealed_langevin_dynamics(
        score, start, [sigma_l], steps_per_level=1, step_lr=1e-4, seed=1, denoise_final=False
    )
    final = annealed_langevin_dynamics(
        score, start, [sigma_l], steps_per_level=1, step_lr=1e-4, seed=1, denoise_final=True
    )
    np.testing.assert_allclose(
        final.samples.numpy(), plain.samples.numpy() * s**2 / (s**2 + sigma_l**2), rtol=1e-5
    )
    assert_moments(final.samples, 0.0, s**4 / (s**2 + sigma_l**2))
