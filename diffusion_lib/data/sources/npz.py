"""NumPy .npz archives, loaded with allow_pickle=False (an archive cannot run code).

`images` rank 3 or 4 (uint8, integers in [0, 255] or floats in [0, 1]) or `points` rank 2;
an optional integer `labels` array of the same length. Key names are options.
"""

from __future__ import annotations

import pathlib
import zipfile

import numpy as np

from diffusion_lib.data.errors import DataError
from diffusion_lib.data.sources.base import (
    Examples,
    as_image_array,
    as_labels_array,
    as_points_array,
    check_range,
    register_source,
)


class NpzSource:
    def __init__(self, path: str, values_key: str, labels_key: str | None):
        path_obj = pathlib.Path(path)
        if not path_obj.is_file():
            raise DataError(f"npz file not found: {path}")
        try:
            with np.load(path_obj, allow_pickle=False) as archive:
                if values_key not in archive.files:
                    raise DataError(
                        f"{path}: no array {values_key!r}; it holds {sorted(archive.files)}"
                    )
                values = archive[values_key]
                labels = archive[labels_key] if labels_key and labels_key in archive.files else None
        except (zipfile.BadZipFile, OSError, EOFError) as err:
            raise DataError(f"{path}: not a readable .npz archive ({err})") from None
        except ValueError as err:  # object arrays need pickle, which stays off
            raise DataError(f"{path}: {err}") from None
        what = f"{path}[{values_key}]"
        if values.ndim == 2:
            self.kind = "points"
            self._values = as_points_array(values, what)
        else:
            self.kind = "image"
            self._values = as_image_array(values, what)
        self.example_shape = tuple(self._values.shape[1:])
        self._labels = (
            None
            if labels is None
            else as_labels_array(labels, len(self._values), f"{path}[{labels_key}]")
        )
        self.has_labels = self._labels is not None

    def __len__(self) -> int:
        return int(self._values.shape[0])

    def read(self, start: int, stop: int) -> Examples:
        check_range(start, stop, len(self))
        labels = None if self._labels is None else self._labels[start:stop]
        return Examples(self._values[start:stop], labels)


@register_source("npz")
def npz(
    split: str = "train",
    *,
    path: str,
    values_key: str = "images",
    labels_key: str | None = "labels",
):
    return NpzSource(path, values_key, labels_key)
