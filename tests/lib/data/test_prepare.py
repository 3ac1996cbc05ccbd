"""Preparation: manifest contents, idempotence, partial rebuilds, interruption, refusals."""

import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from diffusion_lib.data import (
    DataError,
    DatasetSpec,
    finalize_dataset,
    open_dataset,
    open_source,
    plan_dataset,
    prepare_dataset,
    prepare_shard,
    read_manifest,
)
from diffusion_lib.data.shards import file_sha256

MNIST = DatasetSpec.create("mnist_embedded", split="train", rows_per_shard=1000, row_group_size=250)


def _mtimes(directory):
    return {p.name: p.stat().st_mtime_ns for p in pathlib.Path(directory).iterdir()}


def test_manifest_records_shards_checksums_and_statistics(tmp_path):
    manifest = prepare_dataset(MNIST, tmp_path / "mnist")
    assert manifest.num_examples == 4500 and [s.rows for s in manifest.shards] == [1000] * 4 + [500]
    assert (
        manifest.example_shape == (28, 28, 1) and manifest.dtype == "uint8" and manifest.has_labels
    )
    for record in manifest.shards:
        path = tmp_path / "mnist" / record.file
        assert file_sha256(path) == record.sha256 and path.stat().st_size == record.bytes
    pixels = open_source("mnist_embedded", "train", {}).read(0, 4500).values.astype(np.float64)
    assert manifest.stats["mean"][0] == pytest.approx(pixels.mean(), rel=1e-12)
    assert manifest.stats["std"][0] == pytest.approx(pixels.std(), rel=1e-9)
    assert manifest.spec == MNIST.to_dict() and manifest.fingerprint == MNIST.fingerprint()
    assert manifest.created_at and manifest.code_version
    on_disk = json.loads((tmp_path / "mnist" / "manifest.json").read_text())
    assert on_disk["schema_version"] == 1 and len(on_disk["shards"]) == 5


def test_shard_layout_follows_the_issue(tmp_path):
    prepare_dataset(MNIST, tmp_path / "mnist")
    file = pq.ParquetFile(tmp_path / "mnist" / "shard-00000-of-00005.parquet")
    assert file.metadata.num_row_groups == 4
    column_names = file.schema_arrow.names
    assert column_names == ["index", "label", "image"]
    group = file.metadata.row_group(0)
    stats = {
        group.column(i).path_in_schema: group.column(i).statistics for i in range(group.num_columns)
    }
    assert stats["image"] is None and stats["index"] is not None and stats["label"] is not None
    assert group.column(2).compression == "ZSTD"
    assert str(file.schema_arrow.field("image").type) == "fixed_size_binary[784]"


def test_preparing_again_is_a_no_op(tmp_path):
    prepare_dataset(MNIST, tmp_path / "mnist")
    before = _mtimes(tmp_path / "mnist")
    time.sleep(0.01)
    prepare_dataset(MNIST, tmp_path / "mnist")
    assert _mtimes(tmp_path / "mnist") == before


def test_missing_and_corrupt_shards_are_rebuilt_alone_and_identical(tmp_path):
    directory = tmp_path / "mnist"
    manifest = prepare_dataset(MNIST, directory)
    (directory / manifest.shards[1].file).unlink()
    corrupt = directory / manifest.shards[3].file
    data = bytearray(corrupt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    with pytest.raises(DataError, match="shard file missing"):
        open_dataset(directory)
    before = _mtimes(directory)
    rebuilt = prepare_dataset(MNIST, directory)
    after = _mtimes(directory)
    changed = {name for name in after if before.get(name) != after[name]}
    assert changed == {manifest.shards[1].file, manifest.shards[3].file}
    assert rebuilt.shards == manifest.shards  # byte-identical: same sha256 as the first build
    open_dataset(directory, verify="checksum")


def test_checksum_mismatch_is_refused_by_the_reader(tmp_path):
    directory = tmp_path / "mnist"
    manifest = prepare_dataset(MNIST, directory)
    path = directory / manifest.shards[0].file
    data = bytearray(path.read_bytes())
    data[100] ^= 0x01
    path.write_bytes(bytes(data))
    open_dataset(directory, verify="size")  # same size: only the checksum can tell
    with pytest.raises(DataError, match="shard-00000-of-00005.parquet: sha256 mismatch"):
        open_dataset(directory, verify="checksum")


def test_truncated_parquet_names_the_file(tmp_path):
    directory = tmp_path / "mnist"
    manifest = prepare_dataset(MNIST, directory)
    path = directory / manifest.shards[2].file
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="shard-00002-of-00005.parquet: .* bytes, manifest says"):
        open_dataset(directory)
    with pytest.raises(
        DataError, match="shard-00002-of-00005.parquet: not a readable Parquet file"
    ):
        open_dataset(directory, verify="none")


def test_shards_prepared_in_any_order_make_the_same_dataset(tmp_path):
    reference = prepare_dataset(MNIST, tmp_path / "a")
    plan = plan_dataset(MNIST)
    assert plan.num_shards == 5
    for index in reversed(range(plan.num_shards)):
        prepare_shard(MNIST, tmp_path / "b", index)
    with pytest.raises(DataError, match="no manifest.json"):
        open_dataset(tmp_path / "b")
    assert finalize_dataset(MNIST, tmp_path / "b").shards == reference.shards


def test_finalize_refuses_an_incomplete_directory(tmp_path):
    prepare_shard(MNIST, tmp_path / "c", 0)
    with pytest.raises(
        DataError, match=r"shard-00001-of-00005.parquet: missing, corrupt .* prepare_shard\(1\)"
    ):
        finalize_dataset(MNIST, tmp_path / "c")
    assert not (tmp_path / "c" / "manifest.json").exists()


def test_a_failing_source_leaves_no_half_written_file(tmp_path, monkeypatch):
    from diffusion_lib.data.sources import mnist_embedded

    real_read = mnist_embedded.EmbeddedMnist.read

    def failing_read(self, start, stop):
        if start >= 2000:
            raise OSError("disk went away")
        return real_read(self, start, stop)

    monkeypatch.setattr(mnist_embedded.EmbeddedMnist, "read", failing_read)
    with pytest.raises(OSError, match="disk went away"):
        prepare_dataset(MNIST, tmp_path / "d")
    names = sorted(p.name for p in (tmp_path / "d").iterdir())
    assert names == ["shard-00000-of-00005.parquet", "shard-00001-of-00005.parquet"]
    monkeypatch.setattr(mnist_embedded.EmbeddedMnist, "read", real_read)
    before = _mtimes(tmp_path / "d")
    prepare_dataset(MNIST, tmp_path / "d")
    after = _mtimes(tmp_path / "d")
    assert all(after[name] == before[name] for name in before)  # finished shards kept


def test_sigkill_mid_preparation_then_rerun_completes(tmp_path):
    """A real process killed while writing shards; the rerun keeps what was done."""
    spec = DatasetSpec.create("swiss_roll", n=400_000, rows_per_shard=20_000)
    directory = tmp_path / "roll"
    code = (
        "import sys; from diffusion_lib.data import DatasetSpec, prepare_dataset\n"
        f"prepare_dataset(DatasetSpec.from_dict({spec.to_dict()!r}), {str(directory)!r})\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(directory.glob("shard-*.parquet"))) < 3:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = sorted(p.name for p in directory.glob("shard-*.parquet"))
    assert 3 <= len(finished) < 20 and not (directory / "manifest.json").exists()
    with pytest.raises(DataError, match="no manifest.json"):
        open_dataset(directory)
    before = _mtimes(directory)
    manifest = prepare_dataset(spec, directory)
    assert all(_mtimes(directory)[name] == before[name] for name in finished)
    assert not list(directory.glob(".*.tmp"))
    assert manifest.shards == prepare_dataset(spec, tmp_path / "clean").shards


def test_refuses_a_directory_holding_another_dataset(tmp_path):
    prepare_dataset(MNIST, tmp_path / "mnist")
    other = dataclasses.replace(MNIST, split="test")
    with pytest.raises(DataError, match="holds a different dataset"):
        prepare_dataset(other, tmp_path / "mnist")
    prepare_shard(MNIST, tmp_path / "partial", 0)
    with pytest.raises(DataError, match="holds shards of a different dataset"):
        prepare_shard(other, tmp_path / "partial", 0)


def test_refuses_a_manifest_from_a_newer_schema(tmp_path):
    prepare_dataset(MNIST, tmp_path / "mnist")
    path = tmp_path / "mnist" / "manifest.json"
    data = json.loads(path.read_text())
    data["schema_version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match="schema version 99 is newer"):
        read_manifest(tmp_path / "mnist")
    with pytest.raises(DataError, match="schema version 99 is newer"):
        prepare_dataset(MNIST, tmp_path / "mnist")
    assert json.loads(path.read_text())["schema_version"] == 99  # left as it was


def test_spec_is_hashable_round_trips_and_ignores_download():
    spec = DatasetSpec.create(
        "gaussian_mixture", n=10, weights=[0.5, 0.5], means=[[0, 0], [1, 1]], stds=[1, 1]
    )
    assert hash(spec) == hash(DatasetSpec.from_dict(json.loads(json.dumps(spec.to_dict()))))
    assert DatasetSpec.from_dict(spec.to_dict()) == spec
    a = DatasetSpec.create("tfds", name="mnist", data_dir="/x", download=True)
    b = DatasetSpec.create("tfds", name="mnist", data_dir="/x", download=False)
    assert (
        a.fingerprint()
        == b.fingerprint()
        != DatasetSpec.create("tfds", name="mnist", data_dir="/y").fingerprint()
    )
    with pytest.raises(DataError, match="rows_per_shard"):
        DatasetSpec.create("moons", rows_per_shard=0)


def test_finalize_never_vouches_for_a_corrupted_shard(tmp_path):
    directory = tmp_path / "mnist"
    manifest = prepare_dataset(MNIST, directory)
    path = directory / manifest.shards[2].file
    data = bytearray(path.read_bytes())
    data[200] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="shard-00002-of-00005.parquet: missing, corrupt"):
        finalize_dataset(MNIST, directory)
    assert read_manifest(directory).shards == manifest.shards  # the manifest was not rewritten
    prepare_shard(MNIST, directory, 2)  # rebuilds it: the checksum no longer matches
    assert finalize_dataset(MNIST, directory).shards == manifest.shards
