"""Ancestral sampling of a noise-conditional score model (VE, Song et al. 2021 eq. 47) against
the exact score of Gaussian data: closed-form moments after every level, the step's scale, the
last step as Tweedie's formula, and the draw of an NCSN run through it."""

import math

import numpy as np
import pytest
import tensorflow as tf

from diffusion_lib.draw import draw
from diffusion_lib.samplers import SamplerSpec, ve_ancestral_coefficients, ve_ancestral_sample
from diffusion_lib.schedules import sigma_schedule
from tests.lib.samplers.gaussian_chains import D, N, assert_moments


def ancestral_moments(sigmas, m0, v0, mu, s, drift_scale=1.0):
    """Mean and variance after each step on data N(mu, s^2), from x ~ N(m0, v0), derived here
    from the posterior q(x_{i+1} | x_i, x_0) of x_i = x_0 + sigma_i z: the exact score
    -(x - mu) / (s^2 + sigma_i^2) makes each step x' = mu + g (x - mu) + c z with
    g = 1 - d / (s^2 + sigma_i^2), d = sigma_i^2 - sigma_{i+1}^2 (times `drift_scale`),
    c^2 = sigma_{i+1}^2 d / sigma_i^2 and sigma_{L+1} = 0."""
    out, dev, var = [], m0 - mu, v0
    levels = list(sigmas) + [0.0]
    for now, after in zip(levels[:-1], levels[1:], strict=True):
        d = now**2 - after**2
        g = 1.0 - drift_scale * d / (s**2 + now**2)
        dev, var = g * dev, g**2 * var + after**2 * d / now**2
        out.append((mu + dev, var))
    return out


def _score(mu, s):
    return lambda x, sigma: -(x - mu) / (s**2 + sigma[:, None] ** 2)


def test_moments_after_every_level_match_the_posterior_recursion():
    """Four levels, far too few for the chain to be exact: the sampler must still land on the
    recursion's moments at every level, and the recursion with half the drift (a step of the
    wrong scale) misses them by far, so the check can tell."""
    mu, s, sigmas = 0.5, 0.5, [4.0, 2.0, 1.0, 0.5]
    start = tf.random.stateless_normal([N, D], [7, 8], dtype=tf.float64) * sigmas[0]
    expected = ancestral_moments(sigmas, 0.0, sigmas[0] ** 2, mu, s)
    result = ve_ancestral_sample(_score(mu, s), start, sigmas, seed=3, data_rms=1.0)
    assert_moments(result.samples, *expected[-1])
    # Health after each of the first L - 1 steps: the chain should carry the next level's noise.
    assert [h.sigma for h in result.health] == sigmas[1:]
    for level, (mean, var) in zip(result.health, expected, strict=False):
        assert level.rms == pytest.approx(math.sqrt(mean**2 + var), rel=0.01)
        assert level.expected_rms == pytest.approx(math.hypot(1.0, level.sigma))
    halved = ancestral_moments(sigmas, 0.0, sigmas[0] ** 2, mu, s, drift_scale=0.5)
    assert abs(halved[-1][1] - expected[-1][1]) > 0.5 * expected[-1][1]


def test_many_levels_reach_the_data_distribution():
    """Geometric levels from 20 to 0.01 on data N(1, 0.3^2). The step leaves out the spread of
    x_0 given x_i (it uses Tweedie's mean only), so the variance falls short by O(1 / L): 3.8%
    at 200 levels, 0.35% at 3,200 (the recursion). The samples at 200 levels have the
    recursion's moments."""
    mu, s = 1.0, 0.3
    sigmas = sigma_schedule(20.0, 0.01, 200)
    mean, var = ancestral_moments(sigmas, 0.0, 400.0, mu, s)[-1]
    assert mean == pytest.approx(mu, abs=1e-3) and var == pytest.approx(s**2, rel=0.05)
    dense = ancestral_moments(sigma_schedule(20.0, 0.01, 3_200), 0.0, 400.0, mu, s)[-1][1]
    assert var < dense < s**2 and dense == pytest.approx(s**2, rel=0.005)
    start = tf.random.stateless_normal([N, D], [1, 2], dtype=tf.float64) * 20.0
    result = ve_ancestral_sample(_score(mu, s), start, sigmas, seed=4)
    assert_moments(result.samples, mean, var)


def test_the_last_step_is_tweedies_formula():
    """One level: x + sigma^2 s(x, sigma), no noise, so the output is a function of x alone."""
    s, sigma = 1.0, 0.5
    start = tf.random.stateless_normal([64, D], [3, 4])
    out = ve_ancestral_sample(_score(0.0, s), start, [sigma], seed=1)
    again = ve_ancestral_sample(_score(0.0, s), start, [sigma], seed=2)
    np.testing.assert_allclose(
        out.samples.numpy(), start.numpy() * s**2 / (s**2 + sigma**2), rtol=1e-6
    )
    np.testing.assert_array_equal(out.samples.numpy(), again.samples.numpy())
    drift, spread = ve_ancestral_coefficients([2.0, 1.0])
    np.testing.assert_allclose(drift, [3.0, 1.0])
    np.testing.assert_allclose(spread, [math.sqrt(3.0 / 4.0), 0.0])


@pytest.mark.parametrize("sigmas", [[1.0, 2.0], [1.0, 1.0], [1.0, -0.5]])
def test_levels_must_decrease_and_be_positive(sigmas):
    with pytest.raises(ValueError, match="sigma"):
        ve_ancestral_sample(_score(0.0, 1.0), tf.zeros([2, D]), sigmas, seed=0)


def test_an_ncsn_run_draws_through_it(tmp_path, toy_ddpm_run):
    """A trained toy-ncsn run: `draw` starts from N(0, sigma_1^2) with the chunk's seed and the
    run's levels, and returns the sampler's own output in data units, with one health figure per
    level after the first."""
    from tests.lib.test_draw import _train

    run = _train(toy_ddpm_run / "data" / "train", tmp_path / "ncsn", "toy-ncsn", num_steps=50)
    restored = run.restore()
    sigmas = restored.objective.sigmas
    drawn = draw(restored, SamplerSpec.of("ve_ancestral"), 6, [5, 0])
    start = tf.random.stateless_normal((6, 2), [5, 0]) * float(sigmas[0])
    direct = ve_ancestral_sample(restored.model, start, sigmas, seed=[5, 0])
    np.testing.assert_array_equal(drawn.samples, restored.normalizer.to_data(direct.samples))
    assert len(drawn.health) == len(sigmas) - 1
