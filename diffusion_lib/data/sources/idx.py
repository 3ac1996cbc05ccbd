"""IDX files, the original MNIST / Fashion-MNIST format, raw or gzipped.

Format: 2 zero bytes, a type byte (0x08 = uint8), the number of dimensions, then each dimension
as a big-endian uint32, then the data. Images are [n, H, W]; labels [n]. Raw files are memory-
mapped (a range read touches only its rows); gzipped ones are decompressed once per source.
"""

from __future__ import annotations

import gzip
import pathlib

import numpy as np

from diffusion_lib.data.errors import DataError
from diffusion_lib.data.sources.base import (
    Examples,
    as_image_array,
    as_labels_array,
    check_range,
    register_source,
)

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | pathlib.Path) -> np.ndarray:
    """The array stored in an IDX file (raw or .gz). Raises DataError naming the file."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise DataError(f"IDX file not found: {path}")
    with path.open("rb") as handle:
        head = handle.read(4 + 4 * 255)  # the longest possible header
    data = None
    if head[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(path.read_bytes())
        except (OSError, EOFError) as err:
            raise DataError(f"{path}: corrupt gzip stream ({err})") from None
        head = data[: 4 + 4 * 255]
    if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic {head[:4]!r})")
    ndim = head[3]
    if len(head) < 4 + 4 * ndim:
        raise DataError(f"{path}: truncated IDX header")
    dims = tuple(int(d) for d in np.frombuffer(head[4 : 4 + 4 * ndim], dtype=">u4"))
    dtype = np.dtype(_DTYPES[head[2]])
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims)) * dtype.itemsize
    available = (len(data) if data is not None else path.stat().st_size) - offset
    if available != expected:
        raise DataError(f"{path}: IDX header promises {expected} data bytes, file has {available}")
    if data is not None:
        return np.frombuffer(data, dtype=dtype, offset=offset).reshape(dims)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=dims)


class IdxSource:
    kind = "image"

    def __init__(self, images: str, labels: str | None):
        self._images = read_idx(images)
        self._name = str(images)
        if self._images.ndim not in (3, 4):
            raise DataError(
                f"{images}: expected images [n, H, W(, C)], got shape {self._images.shape}"
            )
        self.example_shape = tuple(self._images.shape[1:]) + (
            (1,) if self._images.ndim == 3 else ()
        )
        self._labels = None
        if labels is not None:
            self._labels = read_idx(labels)
            if self._labels.shape != (self._images.shape[0],):
                raise DataError(
                    f"{labels}: {self._labels.shape[0] if self._labels.ndim else 0} labels for "
                    f"{self._images.shape[0]} images in {images}"
                )
        self.has_labels = self._labels is not None

    def __len__(self) -> int:
        return int(self._images.shape[0])

    def read(self, start: int, stop: int) -> Examples:
        check_range(start, stop, len(self))
        values = as_image_array(np.asarray(self._images[start:stop]), self._name)
        labels = None
        if self._labels is not None:
            labels = as_labels_array(np.asarray(self._labels[start:stop]), stop - start, self._name)
        return Examples(values, labels)


@register_source("idx")
def idx(split: str = "train", *, images: str, labels: str | None = None):
    """`images` (and `labels`) are the IDX files of this split; `split` is recorded only."""
    return IdxSource(images, labels)
