"""Metrics against closed forms and known statistics."""

import math

import numpy as np
import pytest

from diffusion_lib.evaluation import (
    MetricInputError,
    class_histogram,
    classifier_score,
    fid,
    frechet_distance,
    kde_bandwidth,
    kde_log_likelihood,
    kid,
    mmd_rbf,
    precision_recall,
    sliced_wasserstein,
)


def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 6))
    cov = a @ a.T + np.eye(6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    # Equal covariances: only the means remain.
    assert frechet_distance(mu1, cov, mu2, cov) == pytest.approx(np.sum((mu1 - mu2) ** 2), rel=1e-9)
    # Commuting (diagonal) covariances: sum (sqrt(a) - sqrt(b))^2.
    d1, d2 = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(d1) - np.sqrt(d2)) ** 2)
    assert frechet_distance(mu1, np.diag(d1), mu2, np.diag(d2)) == pytest.approx(expected, rel=1e-9)
    # Rotating both by the same orthogonal matrix changes nothing.
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    rotated = frechet_distance(q @ mu1, q @ np.diag(d1) @ q.T, q @ mu2, q @ np.diag(d2) @ q.T)
    assert rotated == pytest.approx(expected, rel=1e-8)


def test_fid_of_a_set_with_itself_is_zero_and_detects_a_shift():
    x = np.random.default_rng(1).normal(size=(2000, 16))
    assert fid(x, x) == pytest.approx(0.0, abs=1e-9)
    shifted = x + 0.5
    assert fid(x, shifted) == pytest.approx(16 * 0.25, rel=1e-6)


def test_kid_is_unbiased_for_equal_distributions():
    rng = np.random.default_rng(2)
    estimates = [
        kid(
            rng.normal(size=(300, 8)),
            rng.normal(size=(300, 8)),
            num_subsets=5,
            subset_size=300,
            seed=s,
        ).mean
        for s in range(40)
    ]
    mean, stderr = np.mean(estimates), np.std(estimates) / math.sqrt(len(estimates))
    assert abs(mean) < 3 * stderr
    assert (
        kid(rng.normal(size=(300, 8)), rng.normal(1.0, 1.0, size=(300, 8)), subset_size=300).mean
        > 20 * stderr
    )


def test_precision_recall_extremes():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(400, 4))
    same = precision_recall(x, x.copy())
    assert same.precision == 1.0 and same.recall == 1.0
    far = precision_recall(x, x + 100.0)
    assert far.precision == 0.0 and far.recall == 0.0
    collapsed = precision_recall(x, np.repeat(x[:1], 400, axis=0) + rng.normal(0, 1e-3, (400, 4)))
    assert (
        collapsed.precision == 1.0 and collapsed.recall < 0.05
    )  # mode collapse: precise, no recall


def test_classifier_score_and_histogram_bounds():
    one_hot = np.eye(10)[np.arange(1000) % 10]
    assert classifier_score(one_hot) == pytest.approx(10.0, rel=1e-6)
    assert classifier_score(np.full((100, 10), 0.1)) == pytest.approx(1.0, rel=1e-9)
    assert classifier_score(np.eye(10)[np.zeros(50, int)]) == pytest.approx(1.0, rel=1e-6)
    hist = class_histogram(one_hot[:500])
    assert hist.covered == 10 and sum(hist.frequencies) == pytest.approx(1.0)
    assert class_histogram(np.eye(10)[np.zeros(50, int)]).covered == 1
    assert hist.smallest_share == pytest.approx(0.1)
    # Class 3 starved: 2 of 101 samples, every other class 11; coverage still says 10.
    labels = np.r_[np.full(2, 3), np.tile([0, 1, 2, 4, 5, 6, 7, 8, 9], 11)]
    starved = class_histogram(np.eye(10)[labels])
    assert starved.covered == 10 and starved.smallest_share == pytest.approx(2 / 101)


def test_two_dimensional_metrics():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(4000, 2))
    shift = np.array([3.0, 4.0])
    # Mean over unit directions of |shift . theta| = |shift| * E|cos| = 5 * 2 / pi (uniform angle).
    assert sliced_wasserstein(x, x + shift, num_projections=4000) == pytest.approx(
        5 * 2 / math.pi, rel=0.03
    )
    assert sliced_wasserstein(x, x) == 0.0
    same = [mmd_rbf(rng.normal(size=(300, 2)), rng.normal(size=(300, 2))) for _ in range(20)]
    assert abs(np.mean(same)) < 3 * np.std(same) / math.sqrt(20)
    assert mmd_rbf(x[:300], x[:300] + 1.0) > 10 * np.std(same)


def test_kde_log_likelihood_closed_forms():
    # One centre: the Gaussian's log-density itself, log N(x; c, h^2 I).
    h, x, c = 0.5, np.array([[1.0, -2.0]]), np.array([[0.25, 0.5]])
    exact = -np.sum((x - c) ** 2) / (2 * h**2) - np.log(2 * np.pi * h**2)
    assert kde_log_likelihood(x, c, bandwidth=h) == pytest.approx(exact, rel=1e-12)
    # Two centres, a point far from both: logsumexp keeps it finite (exp alone gives -inf).
    far = kde_log_likelihood([[60.0, 0.0]], [[0.0, 0.0], [1.0, 0.0]], bandwidth=0.1)
    assert np.isfinite(far) and far == pytest.approx(
        np.log(0.5) + np.logaddexp(-(60**2) / 0.02, -(59**2) / 0.02) - np.log(2 * np.pi * 0.01),
        rel=1e-12,
    )
    # Centres from N(0, I) and x ~ N(0, I): the density is N(0, (1 + h^2) I) as m grows, so
    # E log p(x) = -log(2 pi (1 + h^2)) - 1 / (1 + h^2) in 2-D (standard error about 0.01 here;
    # the finite-m bias is far smaller).
    rng = np.random.default_rng(0)
    centres, points, h = rng.normal(size=(20_000, 2)), rng.normal(size=(4_000, 2)), 0.5
    expected = -np.log(2 * np.pi * (1 + h**2)) - 1 / (1 + h**2)
    assert kde_log_likelihood(points, centres, bandwidth=h) == pytest.approx(expected, abs=0.04)
    # Chunking is only a memory bound: the same value bit for bit in any chunk size.
    assert kde_log_likelihood(points[:100], centres, bandwidth=h, chunk_rows=7) == pytest.approx(
        kde_log_likelihood(points[:100], centres, bandwidth=h), rel=1e-12
    )


def _swiss_roll_and_disc(n, seed):
    """n points of the toy source's swiss roll and n of a uniform disc with the same mean and
    the same mean squared distance from it (the spread sliced Wasserstein sees)."""
    rng = np.random.default_rng(seed)
    t = 1.5 * np.pi * (1 + 2 * rng.uniform(size=n))
    roll = np.stack([t * np.cos(t), t * np.sin(t)], 1) / 10 + 0.05 * rng.normal(size=(n, 2))
    centre = roll.mean(0)
    radius = np.sqrt(2 * np.mean(np.sum((roll - centre) ** 2, 1)))  # E r^2 = R^2 / 2
    angle, r = 2 * np.pi * rng.uniform(size=n), radius * np.sqrt(rng.uniform(size=n))
    return roll, centre + np.stack([r * np.cos(angle), r * np.sin(angle)], 1)


def test_a_disc_of_the_rolls_spread_scores_low_precision_where_sliced_wasserstein_is_fooled():
    train, _ = _swiss_roll_and_disc(600, seed=1)
    test, disc = _swiss_roll_and_disc(600, seed=2)
    floor, of_disc = precision_recall(test, train), precision_recall(test, disc)
    # A disc covers the roll (recall near its floor) but most of its points are off it.
    assert floor.precision > 0.85 and of_disc.precision < 0.6 * floor.precision
    assert of_disc.recall > 0.85 * floor.recall
    # Sliced Wasserstein rates the disc within a few floors (what made it look nearly right).
    assert sliced_wasserstein(test, disc) < 3 * sliced_wasserstein(test, train)
    # The kernel density at the bandwidth the real data supports puts the disc's points far
    # below the real points' log-likelihood.
    h = kde_bandwidth(train, test)
    assert h < 0.1  # the roll's width (0.05), not its extent (about 1)
    real = kde_log_likelihood(train, test, bandwidth=h)
    assert kde_log_likelihood(disc, test, bandwidth=h) < real - 3.0


def test_kde_bandwidth_follows_the_data_s_scale():
    rng = np.random.default_rng(3)
    wide = kde_bandwidth(rng.normal(size=(1000, 2)), rng.normal(size=(1000, 2)))
    # Scott's rule for N(0, I) at n = 1000 in 2-D is 1000^(-1/6) = 0.32: the likelihood's pick
    # is of that order, on the grid of 25 log-spaced values from 0.01 to 1.
    assert 0.15 < wide < 0.6
    narrow = kde_bandwidth(0.01 * rng.normal(size=(1000, 2)), 0.01 * rng.normal(size=(1000, 2)))
    assert narrow == pytest.approx(wide / 100, rel=0.35)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: fid(np.ones((10, 3, 3)), np.ones((10, 9))), r"must have shape \[n, d\]"),
        (lambda: kde_log_likelihood(np.ones((3, 2)), np.ones((3, 2)), bandwidth=0.0), "bandwidth"),
        (lambda: kde_bandwidth(np.ones((5, 2)), np.ones((5, 2))), "all the same"),
        (
            lambda: fid(
                np.random.default_rng(0).normal(size=(20, 64)),
                np.random.default_rng(1).normal(size=(20, 64)),
            ),
            "cannot give a full-rank covariance of 64 features",
        ),
        (lambda: fid(np.full((100, 2), np.nan), np.ones((100, 2))), "NaN"),
        (lambda: kid(np.ones((10, 3)), np.ones((10, 4))), "feature dimensions differ"),
        (lambda: precision_recall(np.ones((3, 2)), np.ones((3, 2)), k=3), "at least 4 rows"),
        (lambda: classifier_score(np.full((5, 3), 0.5)), "summing to 1"),
    ],
)
def test_bad_inputs(call, message):
    with pytest.raises(MetricInputError, match=message):
        call()
