"""Sample sets: shards readable by the reader, identical regeneration, refusals by name, image
sets stored as uint8 with a grid."""

import json

import imageio.v3 as iio
import numpy as np
import pytest

from diffusion_lib.data import DataError, open_dataset
from diffusion_lib.sample_sets import generate_samples
from diffusion_lib.samplers import SamplerSpec


def test_sample_set_is_a_dataset_and_regenerates_identically(toy_ddpm_run, tmp_path):
    out = tmp_path / "samples"
    manifest = generate_samples(
        toy_ddpm_run, out, n=2_500, sampler=SamplerSpec.of("ddpm"), rows_per_shard=1_000
    )
    assert manifest.num_examples == 2_500 and [s.rows for s in manifest.shards] == [
        1_000,
        1_000,
        500,
    ]
    assert manifest.extra["checkpoint"] == "ckpt-200" and manifest.extra["sampler"] == {
        "name": "ddpm"
    }
    values = open_dataset(out, verify="checksum").read().values
    assert values.shape == (2_500, 2) and np.all(np.isfinite(values))
    batches = list(open_dataset(out).stream(500, num_epochs=1))
    assert len(batches) == 5
    header = json.loads(
        __import__("pyarrow.parquet", fromlist=["x"])
        .read_metadata(out / manifest.shards[1].file)
        .metadata[b"diffusion_lib"]
    )
    assert header["extra"]["seed"] == 0 and header["extra"]["step"] == 200
    (out / manifest.shards[1].file).unlink()
    again = generate_samples(
        toy_ddpm_run, out, n=2_500, sampler=SamplerSpec.of("ddpm"), rows_per_shard=1_000
    )
    assert again.shards == manifest.shards  # the rebuilt shard is byte-identical
    assert (out / "grid.png").is_file()


def test_a_larger_count_extends_the_set_in_place(toy_ddpm_run, tmp_path):
    """n is a count, not an identity: 2,500 samples where 1,500 were drawn keep the whole shard
    already there (same file, untouched), rewrite the partial one and add the rest, and the
    result is byte for byte the set drawn from scratch. A smaller n keeps the first rows."""
    options = dict(
        sampler=SamplerSpec.of("ddim", num_steps=5), rows_per_shard=1_000, chunk_rows=500
    )
    out = tmp_path / "grown"
    first = generate_samples(toy_ddpm_run, out, n=1_500, **options)
    assert [s.file for s in first.shards] == ["shard-00000.parquet", "shard-00001.parquet"]
    kept = out / "shard-00000.parquet"
    written_at = kept.stat().st_mtime_ns
    grown = generate_samples(toy_ddpm_run, out, n=2_500, **options)
    fresh = generate_samples(toy_ddpm_run, tmp_path / "fresh", n=2_500, **options)
    assert kept.stat().st_mtime_ns == written_at
    assert grown.shards == fresh.shards  # names, row ranges, sizes and sha256s
    assert grown.fingerprint == first.fingerprint and grown.num_examples == 2_500
    np.testing.assert_array_equal(
        open_dataset(out).read(0, 1_000).values,
        open_dataset(tmp_path / "fresh").read(0, 1_000).values,
    )
    shrunk = generate_samples(toy_ddpm_run, out, n=1_000, **options)
    assert shrunk.shards == fresh.shards[:1] and kept.stat().st_mtime_ns == written_at
    assert len(open_dataset(out, verify="checksum")) == 1_000
    with pytest.raises(
        DataError, match=r"rows_per_shard \(1000\) must be a multiple of chunk_rows \(300\)"
    ):
        generate_samples(toy_ddpm_run, out, n=2_500, **{**options, "chunk_rows": 300})


def test_sample_set_refusals(toy_ddpm_run, tmp_path):
    ddim = SamplerSpec.of("ddim", num_steps=5)
    generate_samples(toy_ddpm_run, tmp_path / "s", n=100, sampler=ddim)
    with pytest.raises(DataError, match="holds a different dataset"):
        generate_samples(toy_ddpm_run, tmp_path / "s", n=100, sampler=ddim.replace(num_steps=6))
    with pytest.raises(DataError, match="n must be a positive integer"):
        generate_samples(toy_ddpm_run, tmp_path / "t", n=0)
    with pytest.raises(ValueError, match="sampler must be one of"):
        SamplerSpec.of("leapfrog")
    with pytest.raises(DataError, match=r"num_steps must be in \[1, 100\]"):
        generate_samples(toy_ddpm_run, tmp_path / "t", n=10, sampler=ddim.replace(num_steps=500))
    langevin = SamplerSpec.of("annealed_langevin")
    with pytest.raises(DataError, match="needs a score model; this run trains a diffusion model"):
        generate_samples(toy_ddpm_run, tmp_path / "t", n=10, sampler=langevin)
    with pytest.raises(DataError, match="no complete checkpoint for step 7"):
        generate_samples(toy_ddpm_run, tmp_path / "t", n=10, step=7)
    assert not (tmp_path / "t").exists() or not list((tmp_path / "t").glob("*.parquet"))


def test_image_sample_set_and_grid(mnist_tiny_run, tmp_path):
    manifest = generate_samples(
        mnist_tiny_run, tmp_path / "samples", n=20, sampler=SamplerSpec.of("ddim", num_steps=5)
    )
    assert (
        manifest.kind == "image"
        and manifest.example_shape == (28, 28, 1)
        and manifest.dtype == "uint8"
    )
    grid = iio.imread(tmp_path / "samples" / "grid.png")
    assert grid.shape[:2] == (3 * (56 + 1) + 1, 8 * (56 + 1) + 1)  # 20 images, 8 columns, scale 2
