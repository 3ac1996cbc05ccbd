"""A folder of PNG/JPEG images read with imageio, sorted by relative path.

Images directly in the folder are unlabelled; images in sub-folders are labelled by the sorted
sub-folder names (class 0, 1, ...). All images must share one size unless `size` = (H, W) asks
for a resize (bilinear, with antialiasing). `channels` 1 or 3 converts colour.
"""

from __future__ import annotations

import pathlib

import imageio.v3 as iio
import numpy as np
from PIL import Image

from diffusion_lib.data.errors import DataError
from diffusion_lib.data.sources.base import Examples, as_image_array, check_range, register_source

EXTENSIONS = {".png", ".jpg", ".jpeg"}


class ImageFolderSource:
    kind = "image"

    def __init__(self, path: str, size: tuple[int, int] | None, channels: int):
        root = pathlib.Path(path)
        if not root.is_dir():
            raise DataError(f"image folder not found: {path}")
        if channels not in (1, 3):
            raise DataError(f"channels must be 1 or 3, got {channels!r}")
        if size is not None and (len(size) != 2 or min(size) <= 0):
            raise DataError(f"size must be (height, width) with positive sizes, got {size!r}")
        self._files = sorted(
            p for p in root.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file()
        )
        self._root, self._size, self._channels = (
            root,
            None if size is None else tuple(size),
            channels,
        )
        classes = sorted(
            {p.parent.relative_to(root).parts[0] for p in self._files if p.parent != root}
        )
        if classes and any(p.parent == root for p in self._files):
            raise DataError(f"{path}: mixes images at the top level with class sub-folders")
        self._class_index = {name: i for i, name in enumerate(classes)}
        self.has_labels = bool(classes)
        if self._files:
            first = self._load(self._files[0])
            self.example_shape = first.shape
        else:
            self.example_shape = (0, 0, channels)

    def __len__(self) -> int:
        return len(self._files)

    def _load(self, file: pathlib.Path) -> np.ndarray:
        try:
            image = np.asarray(iio.imread(file))
        except Exception as err:  # imageio raises many types for unreadable files
            raise DataError(f"{file}: cannot read image ({err})") from None
        if image.ndim == 2:
            image = image[..., None]
        if image.ndim != 3 or image.dtype != np.uint8:
            raise DataError(f"{file}: expected an 8-bit image, got {image.dtype} {image.shape}")
        pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image[..., :3])
        pil = pil.convert("L" if self._channels == 1 else "RGB")
        if self._size is not None and pil.size != (self._size[1], self._size[0]):
            pil = pil.resize(
                (self._size[1], self._size[0]), Image.Resampling.BILINEAR, reducing_gap=None
            )
        out = np.asarray(pil)
        return out[..., None] if out.ndim == 2 else out

    def read(self, start: int, stop: int) -> Examples:
        check_range(start, stop, len(self))
        images, labels = [], []
        for file in self._files[start:stop]:
            image = self._load(file)
            if image.shape != self.example_shape:
                raise DataError(
                    f"{file}: size {image.shape} differs from {self.example_shape} of {self._files[0]};"
                    " pass size=(H, W) to resize"
                )
            images.append(image)
            if self.has_labels:
                labels.append(self._class_index[file.parent.relative_to(self._root).parts[0]])
        values = as_image_array(
            np.stack(images) if images else np.zeros((0, *self.example_shape), np.uint8),
            str(self._root),
        )
        return Examples(values, np.asarray(labels, np.int64) if self.has_labels else None)


@register_source("image_folder")
def image_folder(
    split: str = "train", *, path: str, size: tuple[int, int] | None = None, channels: int = 3
):
    return ImageFolderSource(path, size, channels)
