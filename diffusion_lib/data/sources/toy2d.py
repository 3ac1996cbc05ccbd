"""Seeded 2-D toy data: the swiss roll of the score-matching tutorials, moons, circles,
8 Gaussians, checkerboard, and a Gaussian mixture whose density and score are known exactly.

Rows are generated in fixed chunks of 8,192, each from its own generator seeded by
(seed, split, chunk), so any row range is reproducible on its own: a shard can be rebuilt alone
and comes out byte-identical. Splits draw from disjoint streams ("train", "test", "validation").
No scikit-learn: the formulas below are those of sklearn.datasets and of FFJORD's toy data.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence

import numpy as np

from diffusion_lib.analytic import GaussianMixture
from diffusion_lib.data.errors import DataError
from diffusion_lib.data.sources.base import Examples, check_range, register_source

CHUNK = 8192
SPLITS = {"train": 0, "test": 1, "validation": 2}
Generator = Callable[[np.random.Generator, int], tuple[np.ndarray, np.ndarray | None]]


class ToySource:
    kind = "points"
    example_shape = (2,)

    def __init__(
        self, name: str, split: str, n: int, seed: int, generate: Generator, has_labels: bool
    ):
        if split not in SPLITS:
            raise DataError(f"split must be one of {sorted(SPLITS)} for {name}, got {split!r}")
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise DataError(f"n must be a positive integer for {name}, got {n!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise DataError(f"seed must be a non-negative integer for {name}, got {seed!r}")
        self.name, self.split, self.n, self.seed = name, split, n, seed
        self.has_labels = has_labels
        self._generate = generate

    def __len__(self) -> int:
        return self.n

    def _chunk(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        rng = np.random.default_rng([self.seed, SPLITS[self.split], index])
        points, labels = self._generate(rng, CHUNK)
        return points.astype(np.float32), None if labels is None else labels.astype(np.int64)

    def read(self, start: int, stop: int) -> Examples:
        check_range(start, stop, self.n)
        points, labels = [], []
        for chunk in range(start // CHUNK, (max(stop, 1) - 1) // CHUNK + 1):
            p, lab = self._chunk(chunk)
            lo, hi = max(start - chunk * CHUNK, 0), min(stop - chunk * CHUNK, CHUNK)
            points.append(p[lo:hi])
            if lab is not None:
                labels.append(lab[lo:hi])
        values = np.concatenate(points) if points else np.zeros([0, 2], np.float32)
        return Examples(values, np.concatenate(labels) if self.has_labels else None)


def _swiss_roll(noise: float) -> Generator:
    def generate(rng, n):
        # sklearn.datasets.make_swiss_roll, then columns (x, z) / 10, as in the tutorials.
        t = 1.5 * math.pi * (1 + 2 * rng.uniform(size=n))
        height = 21 * rng.uniform(size=n)
        roll = np.stack([t * np.cos(t), height, t * np.sin(t)], axis=1)
        roll += noise * rng.standard_normal((n, 3))
        return roll[:, [0, 2]] / 10.0, None

    return generate


def _moons(noise: float) -> Generator:
    def generate(rng, n):
        labels = rng.integers(0, 2, size=n)
        angle = math.pi * rng.uniform(size=n)
        outer = np.stack([np.cos(angle), np.sin(angle)], axis=1)
        inner = np.stack([1 - np.cos(angle), 1 - np.sin(angle) - 0.5], axis=1)
        points = np.where(labels[:, None] == 0, outer, inner)
        return points + noise * rng.standard_normal((n, 2)), labels

    return generate


def _circles(noise: float, factor: float) -> Generator:
    def generate(rng, n):
        labels = rng.integers(0, 2, size=n)
        angle = 2 * math.pi * rng.uniform(size=n)
        radius = np.where(labels == 0, 1.0, factor)
        points = radius[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)
        return points + noise * rng.standard_normal((n, 2)), labels

    return generate


def _eight_gaussians(scale: float, std: float) -> Generator:
    def generate(rng, n):
        labels = rng.integers(0, 8, size=n)
        angle = 2 * math.pi * labels / 8
        centers = scale * np.stack([np.cos(angle), np.sin(angle)], axis=1)
        return (centers + std * rng.standard_normal((n, 2))) / math.sqrt(2), labels

    return generate


def _checkerboard() -> Generator:
    def generate(rng, n):
        # FFJORD's checkerboard: 8 unit squares of a 4x4 board, uniform within each.
        x1 = rng.uniform(size=n) * 4 - 2
        x2 = rng.uniform(size=n) - rng.integers(0, 2, size=n) * 2
        x2 = x2 + np.floor(x1) % 2
        return np.stack([x1, x2], axis=1) * 2, None

    return generate


@register_source("swiss_roll")
def swiss_roll(split: str = "train", *, n: int = 50_000, seed: int = 0, noise: float = 0.5):
    return ToySource("swiss_roll", split, n, seed, _swiss_roll(noise), has_labels=False)


@register_source("moons")
def moons(split: str = "train", *, n: int = 50_000, seed: int = 0, noise: float = 0.05):
    return ToySource("moons", split, n, seed, _moons(noise), has_labels=True)


@register_source("circles")
def circles(
    split: str = "train",
    *,
    n: int = 50_000,
    seed: int = 0,
    noise: float = 0.05,
    factor: float = 0.5,
):
    return ToySource("circles", split, n, seed, _circles(noise, factor), has_labels=True)


@register_source("8gaussians")
def eight_gaussians(
    split: str = "train", *, n: int = 50_000, seed: int = 0, scale: float = 4.0, std: float = 0.5
):
    return ToySource("8gaussians", split, n, seed, _eight_gaussians(scale, std), has_labels=True)


@register_source("checkerboard")
def checkerboard(split: str = "train", *, n: int = 50_000, seed: int = 0):
    return ToySource("checkerboard", split, n, seed, _checkerboard(), has_labels=False)


def mixture_from_options(
    weights: Sequence[float], means: Sequence[Sequence[float]], stds: Sequence[float]
) -> GaussianMixture:
    """The exact density behind the `gaussian_mixture` source, for evaluation and tests."""
    try:
        return GaussianMixture(weights, means, stds)
    except ValueError as err:
        raise DataError(f"gaussian_mixture: {err}") from None


@register_source("gaussian_mixture")
def gaussian_mixture(
    split: str = "train",
    *,
    n: int = 50_000,
    seed: int = 0,
    weights: Sequence[float] = (0.2, 0.8),
    means: Sequence[Sequence[float]] = ((-5.0, -5.0), (5.0, 5.0)),
    stds: Sequence[float] = (1.0, 1.0),
):
    """Song & Ermon 2019's two-mode mixture by default; labels are the component indices."""
    mixture = mixture_from_options(weights, means, stds)
    if mixture.dim != 2:
        raise DataError(f"gaussian_mixture: means must be 2-D points, got dimension {mixture.dim}")

    def generate(rng, count):
        labels = rng.choice(mixture.weights.size, size=count, p=mixture.weights)
        noise = rng.standard_normal((count, 2))
        return mixture.means[labels] + mixture.stds[labels, None] * noise, labels

    return ToySource("gaussian_mixture", split, n, seed, generate, has_labels=True)


def stored_mixture(options: dict) -> GaussianMixture:
    """The exact density of a prepared `gaussian_mixture` dataset, from its manifest's options
    (those left out at the source's defaults, read from its signature)."""
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(gaussian_mixture).parameters.items()
        if name in ("weights", "means", "stds")
    }
    return mixture_from_options(**{k: options.get(k, v) for k, v in defaults.items()})
