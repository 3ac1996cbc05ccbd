"""Every source: reproducible, random-access consistent, and strict about bad input."""

import gzip
import math
import struct

import imageio.v3 as iio
import numpy as np
import pytest

from diffusion_lib.data import SOURCES, DataError, open_source

TOY = ["swiss_roll", "moons", "circles", "8gaussians", "checkerboard", "gaussian_mixture"]


@pytest.mark.parametrize("name", TOY)
def test_toy_sources_are_reproducible_and_range_consistent(name):
    source = open_source(name, "train", {"n": 20_000, "seed": 3})
    whole = source.read(0, 20_000)
    again = open_source(name, "train", {"n": 20_000, "seed": 3}).read(0, 20_000)
    np.testing.assert_array_equal(whole.values, again.values)
    # Any row range, including ones straddling the 8,192-row chunks, is a slice of the whole.
    part = source.read(8000, 17000)
    np.testing.assert_array_equal(part.values, whole.values[8000:17000])
    assert whole.values.dtype == np.float32 and whole.values.shape == (20_000, 2)
    other_split = open_source(name, "test", {"n": 100, "seed": 3}).read(0, 100)
    other_seed = open_source(name, "train", {"n": 100, "seed": 4}).read(0, 100)
    assert not np.array_equal(other_split.values, whole.values[:100])
    assert not np.array_equal(other_seed.values, whole.values[:100])


def test_swiss_roll_is_the_tutorial_roll():
    points = (
        open_source("swiss_roll", "train", {"n": 50_000}).read(0, 50_000).values.astype(np.float64)
    )
    radius = np.sqrt((points**2).sum(1)) * 10  # = t, the roll parameter, plus noise 0.5
    # t = 1.5 pi (1 + 2u): mean 3 pi; the noise adds about 0.25 / (2 t) on average.
    assert radius.mean() == pytest.approx(3 * math.pi, abs=0.1)
    assert radius.min() > 1.5 * math.pi - 2.5 and radius.max() < 4.5 * math.pi + 2.5


def test_toy_shapes_match_their_definitions():
    circles = open_source("circles", "train", {"n": 20_000, "noise": 0.0}).read(0, 20_000)
    radius = np.sqrt((circles.values**2).sum(1))
    np.testing.assert_allclose(radius[circles.labels == 0], 1.0, atol=1e-5)
    np.testing.assert_allclose(radius[circles.labels == 1], 0.5, atol=1e-5)
    board = open_source("checkerboard", "train", {"n": 20_000}).read(0, 20_000).values
    assert np.all((np.floor(board[:, 0] / 2) + np.floor(board[:, 1] / 2)) % 2 == 0)
    assert board.min() >= -4 and board.max() <= 4
    eight = open_source("8gaussians", "train", {"n": 40_000}).read(0, 40_000)
    for k in range(8):
        center = eight.values[eight.labels == k].mean(0)
        expected = (
            4
            * np.array([math.cos(2 * math.pi * k / 8), math.sin(2 * math.pi * k / 8)])
            / math.sqrt(2)
        )
        np.testing.assert_allclose(center, expected, atol=0.03)


def test_gaussian_mixture_labels_follow_the_weights():
    data = open_source("gaussian_mixture", "train", {"n": 50_000}).read(0, 50_000)
    assert np.mean(data.labels == 0) == pytest.approx(0.2, abs=0.01)
    np.testing.assert_allclose(data.values[data.labels == 1].mean(0), [5, 5], atol=0.03)
    with pytest.raises(DataError, match="gaussian_mixture"):
        open_source(
            "gaussian_mixture",
            "train",
            {"weights": [1.0], "means": [[0.0, 0.0, 0.0]], "stds": [1.0]},
        )


def test_embedded_mnist_is_real_and_offline():
    train = open_source("mnist_embedded", "train", {})
    test = open_source("mnist_embedded", "test", {})
    assert (len(train), len(test)) == (4500, 500)
    a, b = train.read(0, 4500), test.read(0, 500)
    assert a.values.shape == (4500, 28, 28, 1) and a.values.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(a.labels), [450] * 10)
    np.testing.assert_array_equal(np.bincount(b.labels), [50] * 10)
    # MNIST's known pixel statistics (mean 33.3, std 78.6 over the full training set).
    assert a.values.mean() == pytest.approx(33.3, abs=1.5) and a.values.std() == pytest.approx(
        78.6, abs=2.0
    )
    # Disjoint splits: no test image appears in train.
    train_rows = {row.tobytes() for row in a.values}
    assert not any(row.tobytes() in train_rows for row in b.values)


def _write_idx(path, array, gz=False):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_files_round_trip(tmp_path, gz):
    images = np.random.default_rng(0).integers(0, 256, size=(37, 28, 28), dtype=np.uint8)
    labels = np.arange(37) % 10
    _write_idx(tmp_path / "images.idx", images, gz)
    _write_idx(tmp_path / "labels.idx", labels, gz)
    source = open_source(
        "idx",
        "train",
        {"images": str(tmp_path / "images.idx"), "labels": str(tmp_path / "labels.idx")},
    )
    got = source.read(5, 30)
    np.testing.assert_array_equal(got.values[..., 0], images[5:30])
    np.testing.assert_array_equal(got.labels, labels[5:30])


def test_idx_bad_files_name_the_file(tmp_path):
    images = np.zeros((10, 4, 4), np.uint8)
    _write_idx(tmp_path / "ok.idx", images)
    truncated = tmp_path / "truncated.idx"
    truncated.write_bytes((tmp_path / "ok.idx").read_bytes()[:-7])
    with pytest.raises(
        DataError, match="truncated.idx: IDX header promises 160 data bytes, file has 153"
    ):
        open_source("idx", "train", {"images": str(truncated)})
    junk = tmp_path / "junk.idx"
    junk.write_bytes(b"PK\x03\x04 not idx")
    with pytest.raises(DataError, match="junk.idx: not an IDX file"):
        open_source("idx", "train", {"images": str(junk)})
    _write_idx(tmp_path / "labels.idx", np.zeros(9, np.uint8))
    with pytest.raises(DataError, match="9 labels for 10 images"):
        open_source(
            "idx",
            "train",
            {"images": str(tmp_path / "ok.idx"), "labels": str(tmp_path / "labels.idx")},
        )


def test_image_folder_with_classes_resize_and_mixed_sizes(tmp_path):
    rng = np.random.default_rng(1)
    for cls in ("cat", "dog"):
        (tmp_path / "pets" / cls).mkdir(parents=True)
        for i in range(3):
            iio.imwrite(
                tmp_path / "pets" / cls / f"{i}.png",
                rng.integers(0, 256, (12, 10, 3), dtype=np.uint8),
            )
    source = open_source("image_folder", "train", {"path": str(tmp_path / "pets")})
    got = source.read(0, 6)
    assert got.values.shape == (6, 12, 10, 3) and got.labels.tolist() == [0, 0, 0, 1, 1, 1]
    np.testing.assert_array_equal(got.values[3], iio.imread(tmp_path / "pets" / "dog" / "0.png"))
    gray = open_source(
        "image_folder", "train", {"path": str(tmp_path / "pets"), "size": [8, 8], "channels": 1}
    )
    assert gray.read(0, 6).values.shape == (6, 8, 8, 1)
    iio.imwrite(
        tmp_path / "pets" / "dog" / "9.png", rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
    )
    mixed = open_source("image_folder", "train", {"path": str(tmp_path / "pets")})
    with pytest.raises(DataError, match=r"9.png: size \(20, 20, 3\) differs .* pass size=\(H, W\)"):
        mixed.read(0, 7)


def test_npz_round_trip_and_bad_values(tmp_path):
    images = np.random.default_rng(2).integers(0, 256, (20, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "ok.npz", images=images, labels=np.arange(20))
    got = open_source("npz", "train", {"path": str(tmp_path / "ok.npz")}).read(0, 20)
    np.testing.assert_array_equal(got.values[..., 0], images)
    np.savez(tmp_path / "points.npz", points=np.ones((5, 3)))
    pts = open_source(
        "npz", "train", {"path": str(tmp_path / "points.npz"), "values_key": "points"}
    )
    assert pts.kind == "points" and pts.read(0, 5).values.shape == (5, 3)
    cases = {
        "nan": (np.full((4, 8, 8), np.nan), "NaN"),
        "range": (np.full((4, 8, 8), 300, np.int32), r"integer pixels must lie in \[0, 255\]"),
        "float_range": (np.full((4, 8, 8), 2.0), r"floating pixels must lie in \[0, 1\]"),
        "dtype": (np.zeros((4, 8, 8), np.complex64), "unsupported dtype complex64"),
        "pickle": (np.array([[object()]] * 4, dtype=object), "pickle"),
    }
    for name, (values, message) in cases.items():
        np.savez(tmp_path / f"{name}.npz", images=values)
        with pytest.raises(DataError, match=message):
            open_source("npz", "train", {"path": str(tmp_path / f"{name}.npz")}).read(0, 4)
    np.savez(tmp_path / "empty.npz", images=np.zeros((0, 8, 8), np.uint8))
    with pytest.raises(DataError, match="empty"):
        open_source("npz", "train", {"path": str(tmp_path / "empty.npz")})


def test_unknown_source_and_bad_options():
    assert {"swiss_roll", "mnist_embedded", "tfds", "idx", "image_folder", "npz"} <= set(SOURCES)
    with pytest.raises(DataError, match="source must be one of .* got 'imagenet'"):
        open_source("imagenet", "train", {})
    with pytest.raises(DataError, match="source 'swiss_roll' rejected its options"):
        open_source("swiss_roll", "train", {"colour": "red"})
    with pytest.raises(DataError, match="n must be a positive integer"):
        open_source("moons", "train", {"n": 0})
    with pytest.raises(DataError, match="split must be one of"):
        open_source("mnist_embedded", "dev", {})
