"""Sample-quality metrics on feature vectors and 2-D points, in float64 NumPy.

    frechet_distance     ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2)   (FID's formula)
    fid                  Frechet distance between the Gaussians fitted to two feature sets
    kid                  unbiased MMD^2 with the cubic polynomial kernel (x.y / d + 1)^3, mean and
                         standard deviation over subsets (Binkowski et al. 2018)
    precision_recall     k-NN manifold precision and recall (Kynkaanniemi et al. 2019)
    classifier_score     exp(E_x KL(p(y|x) || p(y))), the Inception-score analogue; in [1, classes]
    class_histogram      predicted class frequencies, how many classes are covered, and the
                         rarest class's share (a starved class shows here, not in coverage)
    sliced_wasserstein   mean over random directions of the 1-D Wasserstein-1 distance
    mmd_rbf              unbiased MMD^2 with a Gaussian kernel, bandwidth by the median heuristic
    kde_log_likelihood   mean log-density of points under a Gaussian kernel density on others
    kde_bandwidth        a KDE's bandwidth by held-out likelihood: the one, on a log grid, under
                         which a kernel density of one real set best predicts another

The matrix square root uses the symmetric form S1^1/2 S2 S1^1/2, whose eigenvalues are real and
non-negative, so no complex parts or scipy.linalg.sqrtm round-off appear. Every function checks
its inputs: shapes, finiteness, and enough samples for what it estimates.
"""

from __future__ import annotations

import dataclasses

import numpy as np


class MetricInputError(ValueError):
    """Sample sets of the wrong shape, with NaN, or too few for the statistic."""


def _features(x, name: str, min_rows: int = 2) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise MetricInputError(f"{name} must have shape [n, d], got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise MetricInputError(f"{name} contains NaN or Inf")
    if x.shape[0] < min_rows:
        raise MetricInputError(f"{name} needs at least {min_rows} rows, got {x.shape[0]}")
    return x


def _pair(a, b, min_rows: int = 2) -> tuple[np.ndarray, np.ndarray]:
    a, b = _features(a, "first set", min_rows), _features(b, "second set", min_rows)
    if a.shape[1] != b.shape[1]:
        raise MetricInputError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    return a, b


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    root1 = _psd_sqrt(cov1)
    middle = root1 @ cov2 @ root1
    eigenvalues = np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)
    value = float(
        np.sum((mu1 - mu2) ** 2)
        + np.trace(cov1)
        + np.trace(cov2)
        - 2.0 * np.sum(np.sqrt(eigenvalues))
    )
    return max(value, 0.0)


def gaussian_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    x = _features(features, "features")
    if x.shape[0] <= x.shape[1]:
        raise MetricInputError(
            f"{x.shape[0]} samples cannot give a full-rank covariance of {x.shape[1]} features; need more than {x.shape[1]}"
        )
    return x.mean(axis=0), np.cov(x, rowvar=False)


def fid(real, fake) -> float:
    real, fake = _pair(real, fake)
    return frechet_distance(*gaussian_statistics(real), *gaussian_statistics(fake))


@dataclasses.dataclass(frozen=True)
class Estimate:
    mean: float
    std: float


def kid(real, fake, *, num_subsets: int = 50, subset_size: int = 1000, seed: int = 0) -> Estimate:
    real, fake = _pair(real, fake)
    size = min(subset_size, real.shape[0], fake.shape[0])
    if size < 2:
        raise MetricInputError("KID needs at least 2 samples in each set")
    dim = real.shape[1]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(num_subsets):
        x = real[rng.choice(real.shape[0], size, replace=False)]
        y = fake[rng.choice(fake.shape[0], size, replace=False)]
        kxx, kyy, kxy = (
            (x @ x.T / dim + 1) ** 3,
            (y @ y.T / dim + 1) ** 3,
            (x @ y.T / dim + 1) ** 3,
        )
        off = size * (size - 1)
        values.append(
            (kxx.sum() - np.trace(kxx)) / off + (kyy.sum() - np.trace(kyy)) / off - 2 * kxy.mean()
        )
    return Estimate(float(np.mean(values)), float(np.std(values)))


def _pairwise_sq(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.maximum((a**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2 * a @ b.T, 0.0)


def _knn_radii(x: np.ndarray, k: int) -> np.ndarray:
    distances = _pairwise_sq(x, x)
    return np.sqrt(np.partition(distances, k, axis=1)[:, k])  # column 0 is the point itself


@dataclasses.dataclass(frozen=True)
class PrecisionRecall:
    precision: float
    recall: float


def precision_recall(real, fake, *, k: int = 3) -> PrecisionRecall:
    real, fake = _pair(real, fake, min_rows=k + 1)
    real_radii, fake_radii = _knn_radii(real, k), _knn_radii(fake, k)
    cross = np.sqrt(_pairwise_sq(fake, real))  # [fake, real]
    precision = np.mean(np.any(cross <= real_radii[None, :], axis=1))
    recall = np.mean(np.any(cross.T <= fake_radii[None, :], axis=1))
    return PrecisionRecall(float(precision), float(recall))


def _probabilities(probs, name="class probabilities") -> np.ndarray:
    p = _features(probs, name, min_rows=1)
    if np.any(p < 0) or not np.allclose(p.sum(1), 1.0, atol=1e-4):
        raise MetricInputError(f"{name} must be non-negative rows summing to 1")
    return p


def classifier_score(probs) -> float:
    p = _probabilities(probs)
    marginal = p.mean(0)
    kl = np.sum(
        p * (np.log(np.clip(p, 1e-12, None)) - np.log(np.clip(marginal, 1e-12, None))), axis=1
    )
    return float(np.exp(kl.mean()))


@dataclasses.dataclass(frozen=True)
class ClassHistogram:
    frequencies: tuple[float, ...]
    covered: int  # classes predicted for at least `min_share` of the samples

    @property
    def smallest_share(self) -> float:
        """The rarest predicted class's share of the samples (1 / classes when balanced)."""
        return min(self.frequencies)


def class_histogram(probs, *, min_share: float = 0.01) -> ClassHistogram:
    p = _probabilities(probs)
    counts = np.bincount(p.argmax(1), minlength=p.shape[1]) / p.shape[0]
    return ClassHistogram(tuple(float(c) for c in counts), int(np.sum(counts >= min_share)))


def sliced_wasserstein(a, b, *, num_projections: int = 256, seed: int = 0) -> float:
    a, b = _pair(a, b)
    n = min(a.shape[0], b.shape[0])
    rng = np.random.default_rng(seed)
    directions = rng.standard_normal((a.shape[1], num_projections))
    directions /= np.linalg.norm(directions, axis=0, keepdims=True)
    # Equal sizes: sort both projections and compare quantiles (subsample the larger set).
    a = a[rng.choice(a.shape[0], n, replace=False)] if a.shape[0] > n else a
    b = b[rng.choice(b.shape[0], n, replace=False)] if b.shape[0] > n else b
    pa, pb = np.sort(a @ directions, axis=0), np.sort(b @ directions, axis=0)
    return float(np.mean(np.abs(pa - pb)))


def mmd_rbf(a, b, *, bandwidth: float | None = None) -> float:
    a, b = _pair(a, b)
    joint = np.concatenate([a, b])
    if bandwidth is None:
        sample = joint[: min(len(joint), 2000)]
        bandwidth = float(
            np.sqrt(np.median(_pairwise_sq(sample, sample)[np.triu_indices(len(sample), 1)]) / 2)
        )
    gamma = 1.0 / (2 * bandwidth**2)
    kaa, kbb, kab = (
        np.exp(-gamma * _pairwise_sq(a, a)),
        np.exp(-gamma * _pairwise_sq(b, b)),
        np.exp(-gamma * _pairwise_sq(a, b)),
    )
    n, m = len(a), len(b)
    return float((kaa.sum() - n) / (n * (n - 1)) + (kbb.sum() - m) / (m * (m - 1)) - 2 * kab.mean())


def kde_bandwidth(fit, held_out, *, num: int = 25, lowest: float = 0.01) -> float:
    """The Gaussian kernel bandwidth that maximises the mean log-likelihood of `held_out` [m, d]
    under the kernel density on `fit` [n, d], over `num` log-spaced values from `lowest` to 1
    times the mean per-dimension std of `fit`. Fitted on real data only, it is the finest scale
    the data supports: a rule of thumb (Scott's) smooths a thin spiral into a band."""
    fit, held_out = _pair(fit, held_out)
    scale = float(np.mean(np.std(fit, axis=0)))
    if not scale > 0:
        raise MetricInputError("the points to fit a bandwidth to are all the same")
    grid = scale * np.geomspace(lowest, 1.0, num)
    scores = [kde_log_likelihood(held_out, fit, bandwidth=h) for h in grid]
    return float(grid[int(np.argmax(scores))])


def kde_log_likelihood(points, centres, *, bandwidth: float, chunk_rows: int = 1024) -> float:
    """Mean over `points` [n, d] of log p(x), p the Gaussian kernel density on `centres` [m, d]:
    log p(x) = logsumexp_j(-|x - c_j|^2 / (2 h^2)) - log m - (d / 2) log(2 pi h^2).

    A point far from every centre gets a very low log-density rather than -inf (logsumexp), so
    a model that puts samples where the data has none is penalised in proportion to how far."""
    points, centres = _pair(points, centres, min_rows=1)
    if not (np.isfinite(bandwidth) and bandwidth > 0):
        raise MetricInputError(f"bandwidth must be positive and finite, got {bandwidth!r}")
    d = points.shape[1]
    const = -np.log(centres.shape[0]) - 0.5 * d * np.log(2 * np.pi * bandwidth**2)
    total = 0.0
    for start in range(0, points.shape[0], chunk_rows):  # [chunk, m] at a time
        exponent = -_pairwise_sq(points[start : start + chunk_rows], centres) / (2 * bandwidth**2)
        peak = exponent.max(axis=1, keepdims=True)
        total += float(np.sum(peak[:, 0] + np.log(np.exp(exponent - peak).sum(axis=1))))
    return total / points.shape[0] + float(const)
