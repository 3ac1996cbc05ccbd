"""Schedules against independent closed forms in float64."""

import math

import numpy as np
import pytest

from diffusion_lib.schedules import (
    BETA_SCHEDULES,
    beta_schedule,
    level_log_probs,
    sigma_schedule,
)


def test_linear_endpoints_and_spacing():
    betas = beta_schedule("linear", 1000, 1e-4, 0.02)
    assert betas.dtype == np.float64 and betas.shape == (1000,)
    assert betas[0] == pytest.approx(1e-4, abs=0, rel=1e-15)
    assert betas[-1] == pytest.approx(0.02, rel=1e-15)
    np.testing.assert_allclose(np.diff(betas), (0.02 - 1e-4) / 999, rtol=1e-9)


def test_quad_is_square_of_linear_sqrt():
    betas = beta_schedule("quad", 500, 1e-4, 0.02)
    roots = np.sqrt(betas)
    np.testing.assert_allclose(np.diff(roots), (math.sqrt(0.02) - math.sqrt(1e-4)) / 499, rtol=1e-9)
    assert betas[0] == pytest.approx(1e-4, rel=1e-12) and betas[-1] == pytest.approx(
        0.02, rel=1e-12
    )


def test_sigmoid_matches_closed_form():
    betas = beta_schedule("sigmoid", 100, 1e-4, 0.02)
    z = -6.0 + 12.0 * np.arange(100) / 99.0
    expected = np.array([1e-4 + (0.02 - 1e-4) / (1.0 + math.exp(-v)) for v in z])
    np.testing.assert_allclose(betas, expected, rtol=1e-12)
    # Symmetric about the midpoint of start and end.
    np.testing.assert_allclose(betas + betas[::-1], 1e-4 + 0.02, rtol=1e-12)


def test_cosine_alphas_cumprod_follows_the_squared_cosine():
    num_steps, s = 1000, 0.008
    betas = beta_schedule("cosine", num_steps)
    abar = np.cumprod(1.0 - betas)
    f = lambda t: math.cos((t / num_steps + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    # Unclipped steps reproduce f(t)/f(0) exactly; the clip at 0.999 only touches the last few.
    unclipped = betas < 0.999
    expected = np.array([f(t + 1) / f(0) for t in range(num_steps)])
    first_clip = np.argmin(unclipped) if not unclipped.all() else num_steps
    np.testing.assert_allclose(abar[:first_clip], expected[:first_clip], rtol=1e-10)
    assert betas.max() == pytest.approx(0.999)
    assert abar[-1] < 1e-6


@pytest.mark.parametrize("kind", ["linear", "quad", "sigmoid", "cosine"])
def test_monotone_and_in_open_unit_interval(kind):
    betas = beta_schedule(kind, 300)
    assert np.all(np.diff(betas) >= 0)
    assert np.all((betas > 0) & (betas < 1))
    abar = np.cumprod(1 - betas)
    assert np.all(np.diff(abar) < 0)


def test_registry_lists_the_four_kinds():
    assert {"linear", "quad", "sigmoid", "cosine"} <= set(BETA_SCHEDULES)


@pytest.mark.parametrize(
    ("args", "kwargs", "names"),
    [
        (("nope", 10), {}, "kind"),
        (("linear", 0), {}, "num_steps"),
        (("linear", -3), {}, "num_steps"),
        (("linear", 2.5), {}, "num_steps"),
        (("linear", 10, 0.0, 0.02), {}, "start"),
        (("linear", 10, 1e-4, 1.0), {}, "end"),
        (("linear", 10, 0.02, 1e-4), {}, "start"),
        (("cosine", 10), {"max_beta": 1.5}, "max_beta"),
    ],
)
def test_bad_arguments_name_the_argument(args, kwargs, names):
    with pytest.raises(ValueError, match=names):
        beta_schedule(*args, **kwargs)


def test_sigma_schedule_is_geometric():
    sigmas = sigma_schedule(50.0, 0.01, 10)
    assert sigmas[0] == pytest.approx(50.0, rel=1e-14) and sigmas[-1] == pytest.approx(
        0.01, rel=1e-14
    )
    ratios = sigmas[:-1] / sigmas[1:]
    np.testing.assert_allclose(ratios, (50.0 / 0.01) ** (1 / 9), rtol=1e-12)
    assert sigma_schedule(2.0, 2.0, 1).tolist() == [2.0]


@pytest.mark.parametrize(
    ("args", "name"),
    [
        ((1.0, 0.1, 0), "num_levels"),
        ((0.1, 1.0, 5), "sigma_min"),
        ((-1.0, 0.1, 5), "sigma_max"),
        ((1.0, 0.0, 5), "sigma_min"),
        ((float("nan"), 0.1, 5), "sigma_max"),
        ((1.0, 0.1, 1), "num_levels"),
    ],
)
def test_sigma_schedule_bad_arguments(args, name):
    with pytest.raises(ValueError, match=name):
        sigma_schedule(*args)


def test_log_normal_level_draw_has_the_target_moments_on_a_fine_grid():
    """On a wide, fine geometric grid the discrete draw is the log-normal itself: the mean and
    std of log sigma are the targets."""
    sigmas = sigma_schedule(math.exp(10.0), math.exp(-10.0), 2_001)
    p = np.exp(level_log_probs(sigmas, "log_normal", -1.2, 0.7))
    log_sigma = np.log(sigmas)
    mean = float(p @ log_sigma)
    assert p.sum() == pytest.approx(1.0, abs=1e-12)
    assert mean == pytest.approx(-1.2, abs=1e-6)
    assert math.sqrt(p @ (log_sigma - mean) ** 2) == pytest.approx(0.7, abs=1e-3)
    uniform = np.exp(level_log_probs(sigmas, "uniform"))
    assert np.allclose(uniform, 1 / 2_001)


def test_log_normal_level_draw_corrects_for_an_uneven_grid():
    """DDPM's timesteps are uneven in log sigma (6 of 1,000 below sigma 0.03, 525 above 3):
    weighting by each level's cell width keeps the draw's distribution function within 0.01 of
    the normal one; the density alone (no widths) puts 0.22 below the median, not 0.5."""
    betas = beta_schedule("linear", 1000, 1e-4, 0.02)
    abar = np.cumprod(1.0 - betas)
    sigmas = np.sqrt((1.0 - abar) / abar)
    p = np.exp(level_log_probs(sigmas, "log_normal", -1.2, 1.2))
    log_sigma = np.log(sigmas)  # increasing with t
    unweighted = np.exp(-0.5 * ((log_sigma + 1.2) / 1.2) ** 2)
    unweighted /= unweighted.sum()
    for z in (-2.0, -1.0, 0.0, 1.0, 2.0):
        below = log_sigma <= -1.2 + 1.2 * z
        normal_cdf = 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))
        assert p[below].sum() == pytest.approx(normal_cdf, abs=0.01), z
    assert abs(unweighted[log_sigma <= -1.2].sum() - 0.5) > 0.25


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (([1.0, 2.0], "beta"), "kind"),
        (([1.0, -2.0], "uniform"), "sigmas"),
        (([1.0, 1.0], "log_normal"), "distinct"),
        (([1.0, 2.0], "log_normal", 0.0, 0.0), "log_std"),
    ],
)
def test_level_log_probs_bad_arguments(args, message):
    with pytest.raises(ValueError, match=message):
        level_log_probs(*args)
