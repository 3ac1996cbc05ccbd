"""Masks: which entries of an example are given (True) and which a sampler fills in (False).

A mask is named by a spec string, the same on the command line, in a flow parameter and here:

    top-known, bottom-known, left-known, right-known   that half of the image given
    centre-missing                                      a centre box of half the height and
                                                        width missing, the rest given
    random-missing:P                                    each pixel missing with probability P
                                                        (0 < P < 1), drawn from `seed`
    png:PATH                                            a PNG of the image's height and width:
                                                        white (>= 128) given, black missing
    coordinate-known:I                                  points: coordinate I given (imputation:
                                                        given x, draw y)

`mask_of(spec, shape, seed=...)` returns a boolean array of the example's `shape` ([H, W, C] for
images, [d] for points); an image mask is the same for all channels of a pixel. A mask that
gives everything or nothing is refused: there would be nothing to draw, or nothing to draw from.
"""

from __future__ import annotations

import pathlib

import numpy as np

HALVES = ("top-known", "bottom-known", "left-known", "right-known")
NAMES = (*HALVES, "centre-missing", "random-missing:P", "png:PATH", "coordinate-known:I")


class MaskError(ValueError):
    """A mask spec that cannot be read, or does not fit the data."""


def mask_of(spec: str, shape, *, seed: int = 0) -> np.ndarray:
    """The boolean mask [*shape] of `spec` (see the module's docstring); raises MaskError naming
    the spec or the file."""
    shape = tuple(int(s) for s in shape)
    if not isinstance(spec, str) or not spec:
        raise MaskError(f"a mask is one of {', '.join(NAMES)}; got {spec!r}")
    kind, _, argument = spec.partition(":")
    if kind == "coordinate-known":
        mask = _coordinate(spec, argument, shape)
    else:
        if len(shape) != 3:
            raise MaskError(f"mask {spec!r} is for images [H, W, C]; the data is {list(shape)}")
        pixels = _image(spec, kind, argument, shape[:2], seed)
        mask = np.broadcast_to(pixels[:, :, None], shape).copy()
    if mask.all():
        raise MaskError(f"mask {spec!r} gives every entry of {list(shape)}: nothing to draw")
    if not mask.any():
        raise MaskError(f"mask {spec!r} gives no entry of {list(shape)}: nothing to draw from")
    return mask


def _coordinate(spec: str, argument: str, shape: tuple[int, ...]) -> np.ndarray:
    if len(shape) != 1:
        raise MaskError(f"mask {spec!r} is for points [d]; the data is {list(shape)}")
    try:
        index = int(argument)
    except ValueError:
        raise MaskError(f"mask {spec!r}: coordinate-known:I wants an integer I") from None
    if not 0 <= index < shape[0]:
        raise MaskError(f"mask {spec!r}: the points have coordinates 0 to {shape[0] - 1}")
    mask = np.zeros(shape, bool)
    mask[index] = True
    return mask


def _image(spec: str, kind: str, argument: str, size: tuple[int, int], seed: int) -> np.ndarray:
    height, width = size
    rows, cols = np.mgrid[0:height, 0:width]
    if kind in HALVES:
        if argument:
            raise MaskError(f"mask {spec!r}: {kind} takes no argument")
        return {
            "top-known": rows < height // 2,
            "bottom-known": rows >= height - height // 2,
            "left-known": cols < width // 2,
            "right-known": cols >= width - width // 2,
        }[kind]
    if kind == "centre-missing":
        if argument:
            raise MaskError(f"mask {spec!r}: centre-missing takes no argument")
        top, left = height // 4, width // 4
        box = (
            (rows >= top) & (rows < top + height // 2) & (cols >= left) & (cols < left + width // 2)
        )
        return ~box
    if kind == "random-missing":
        try:
            rate = float(argument)
        except ValueError:
            rate = float("nan")
        if not 0.0 < rate < 1.0:
            raise MaskError(f"mask {spec!r}: random-missing:P wants a rate 0 < P < 1")
        return np.random.default_rng(seed).random((height, width)) >= rate
    if kind == "png":
        return _png(spec, pathlib.Path(argument), size)
    raise MaskError(f"unknown mask {spec!r}; the masks: {', '.join(NAMES)}")


def _png(spec: str, path: pathlib.Path, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise MaskError(f"mask {spec!r}: no file {path}")
    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("L"))
    except (OSError, UnidentifiedImageError) as err:
        raise MaskError(f"mask {spec!r}: {path} is not a readable image ({err})") from None
    if pixels.shape != size:
        raise MaskError(
            f"mask {spec!r}: {path} is {pixels.shape[0]}x{pixels.shape[1]} pixels; the images "
            f"are {size[0]}x{size[1]}"
        )
    return pixels >= 128
