"""Masks as data (diffusion_lib.masks): each named mask's region, PNG masks, refusals."""

import numpy as np
import pytest
from PIL import Image

from diffusion_lib.masks import MaskError, mask_of

SHAPE = (28, 28, 1)


def test_the_halves_and_the_centre_box():
    top = mask_of("top-known", SHAPE)
    assert top.shape == SHAPE and top[:14].all() and not top[14:].any()
    assert (mask_of("bottom-known", SHAPE) == ~top).all()
    left = mask_of("left-known", SHAPE)
    assert left[:, :14].all() and not left[:, 14:].any()
    assert (mask_of("right-known", SHAPE) == ~left).all()
    centre = mask_of("centre-missing", SHAPE)
    assert not centre[7:21, 7:21].any() and centre.sum() == 28 * 28 - 14 * 14
    rgb = mask_of("top-known", (32, 32, 3))
    assert (rgb == rgb[..., :1]).all()  # a pixel is given in all its channels or none


def test_random_pixels_at_a_rate_from_a_seed():
    a, b = (
        mask_of("random-missing:0.3", SHAPE, seed=1),
        mask_of("random-missing:0.3", SHAPE, seed=1),
    )
    assert (a == b).all() and not (a == mask_of("random-missing:0.3", SHAPE, seed=2)).all()
    missing = np.mean([1 - mask_of("random-missing:0.3", SHAPE, seed=s).mean() for s in range(20)])
    assert abs(missing - 0.3) < 0.02  # 15,680 pixels: 0.3 +- 0.0037 (1 std)


def test_a_png_mask_white_given(tmp_path):
    pixels = np.zeros((28, 28), np.uint8)
    pixels[:, :10] = 255
    Image.fromarray(pixels).save(tmp_path / "mask.png")
    mask = mask_of(f"png:{tmp_path / 'mask.png'}", SHAPE)
    assert mask[:, :10].all() and not mask[:, 10:].any()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "wrong.png")
    with pytest.raises(MaskError, match=r"wrong.png is 32x32 pixels; the images are 28x28"):
        mask_of(f"png:{tmp_path / 'wrong.png'}", SHAPE)
    with pytest.raises(MaskError, match="gives no entry"):
        Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "none.png")
        mask_of(f"png:{tmp_path / 'none.png'}", SHAPE)
    with pytest.raises(MaskError, match="gives every entry"):
        Image.fromarray(np.full((28, 28), 255, np.uint8)).save(tmp_path / "all.png")
        mask_of(f"png:{tmp_path / 'all.png'}", SHAPE)
    with pytest.raises(MaskError, match="no file"):
        mask_of(f"png:{tmp_path / 'missing.png'}", SHAPE)
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(MaskError, match="not a readable image"):
        mask_of(f"png:{tmp_path / 'text.png'}", SHAPE)


def test_a_coordinate_of_points_and_the_refusals():
    assert mask_of("coordinate-known:0", (2,)).tolist() == [True, False]
    for spec, shape, message in [
        ("coordinate-known:2", (2,), "coordinates 0 to 1"),
        ("coordinate-known:x", (2,), "wants an integer"),
        ("top-known", (2,), "is for images"),
        ("coordinate-known:0", SHAPE, "is for points"),
        ("random-missing:1.5", SHAPE, "rate 0 < P < 1"),
        ("diagonal", SHAPE, "unknown mask 'diagonal'"),
        ("top-known:3", SHAPE, "takes no argument"),
    ]:
        with pytest.raises(MaskError, match=message):
            mask_of(spec, shape)
