"""The source contract and its registry.

A source is a random-access view of one split of a dataset: `len(source)` examples, each an
image (uint8 [H, W, C]) or a point (float32 [d]), optionally with an integer label, read by
row range. Random access by range is what lets every shard be prepared independently.

Register a source with `@register_source("name")` on a factory `(split, **options) -> Source`;
adding one is one new module in this package, imported by `sources/__init__.py`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Literal, Protocol

import numpy as np

from diffusion_lib.data.errors import DataError

Kind = Literal["image", "points"]


@dataclasses.dataclass(frozen=True)
class Examples:
    """values: uint8 [n, H, W, C] (images) or float32 [n, d] (points); labels: int64 [n] or None.
    extra: more columns of the rows, stored beside them in a shard (name -> [n, ...]: uint8
    arrays as images are, float32 as points are, integers [n], strings [n]); readers of the
    examples ignore them, `ShardedDataset.read_extra` reads them."""

    values: np.ndarray
    labels: np.ndarray | None
    extra: dict = dataclasses.field(default_factory=dict)


class Source(Protocol):
    kind: Kind
    example_shape: tuple[int, ...]
    has_labels: bool

    def __len__(self) -> int: ...

    def read(self, start: int, stop: int) -> Examples: ...


SourceFactory = Callable[..., Source]
SOURCES: dict[str, SourceFactory] = {}


def register_source(name: str) -> Callable[[SourceFactory], SourceFactory]:
    def add(factory: SourceFactory) -> SourceFactory:
        if name in SOURCES:
            raise ValueError(f"source {name!r} is already registered")
        SOURCES[name] = factory
        return factory

    return add


def open_source(name: str, split: str, options: dict) -> Source:
    """Builds the source `name` for `split`; unknown names and bad options raise DataError."""
    if name not in SOURCES:
        raise DataError(f"source must be one of {sorted(SOURCES)}, got {name!r}")
    try:
        source = SOURCES[name](split, **options)
    except TypeError as err:  # an unexpected or missing keyword: say which source rejected it
        raise DataError(f"source {name!r} rejected its options {sorted(options)}: {err}") from None
    if len(source) == 0:
        raise DataError(f"source {name!r} split {split!r} is empty")
    return source


def as_image_array(values: np.ndarray, what: str) -> np.ndarray:
    """Checks and converts pixel data to uint8 [n, H, W, C].

    Accepts uint8; other integer dtypes within [0, 255]; floating data in [0, 1] (scaled by 255
    and rounded). NaN, out-of-range values and non-numeric dtypes raise DataError naming `what`.
    Rank 3 input [n, H, W] gains a channel axis.
    """
    values = np.asarray(values)
    if values.ndim == 3:
        values = values[..., None]
    if values.ndim != 4:
        raise DataError(
            f"{what}: images must have shape [n, H, W] or [n, H, W, C], got {values.shape}"
        )
    if values.shape[-1] not in (1, 3):
        raise DataError(f"{what}: images must have 1 or 3 channels, got {values.shape[-1]}")
    if values.dtype == np.uint8:
        return values
    if np.issubdtype(values.dtype, np.integer):
        if values.size and (values.min() < 0 or values.max() > 255):
            raise DataError(
                f"{what}: integer pixels must lie in [0, 255], found [{values.min()}, {values.max()}]"
            )
        return values.astype(np.uint8)
    if np.issubdtype(values.dtype, np.floating):
        if not np.all(np.isfinite(values)):
            raise DataError(f"{what}: pixels contain NaN or Inf")
        if values.size and (values.min() < 0.0 or values.max() > 1.0):
            raise DataError(
                f"{what}: floating pixels must lie in [0, 1], found [{values.min()}, {values.max()}]"
            )
        return np.rint(values * 255.0).astype(np.uint8)
    raise DataError(f"{what}: pixels have unsupported dtype {values.dtype}; expected uint8")


def as_points_array(values: np.ndarray, what: str) -> np.ndarray:
    """Checks and converts point data to finite float32 [n, d]."""
    values = np.asarray(values)
    if values.ndim != 2:
        raise DataError(f"{what}: points must have shape [n, d], got {values.shape}")
    if not (np.issubdtype(values.dtype, np.floating) or np.issubdtype(values.dtype, np.integer)):
        raise DataError(f"{what}: points have unsupported dtype {values.dtype}")
    values = values.astype(np.float32)
    if not np.all(np.isfinite(values)):
        raise DataError(f"{what}: points contain NaN or Inf")
    return values


def as_labels_array(labels, n: int, what: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{what}: labels must be {n} integers, got {labels.dtype} {labels.shape}")
    return labels.astype(np.int64)


def check_range(start: int, stop: int, length: int) -> None:
    if not 0 <= start <= stop <= length:
        raise DataError(f"row range [{start}, {stop}) is outside [0, {length})")
