"""The dataset tasks under a flow: plan, one task per shard (mapped), finalize. The dataset they
write is the library's `prepare_dataset` byte for byte, and a second run rewrites nothing."""

import json

import pytest
from prefect import flow
from prefect.utilities.annotations import unmapped

from diffusion_lib.data import DatasetSpec, prepare_dataset
from tasks.data import finalize_shards, plan_shards, prepare_shards

pytestmark = pytest.mark.cost(25)

SPEC = DatasetSpec.create("moons", n=1_000, rows_per_shard=300)


@flow
def prepare(spec: DatasetSpec, directory: str) -> str:
    count = plan_shards(spec)
    files = prepare_shards.map(unmapped(spec), unmapped(directory), range(count))
    return finalize_shards(spec, directory, files.result())


def _contents(directory):
    """Every file's bytes; the manifest's without its creation time."""
    files = {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}
    manifest = json.loads(files.pop("manifest.json"))
    del manifest["created_at"]
    return files | {"manifest.json": manifest}


def _mtimes(directory):
    return {p.name: p.stat().st_mtime_ns for p in directory.iterdir()}


def test_mapped_shard_tasks_write_the_librarys_dataset(prefect_server, tmp_path):
    assert prepare(SPEC, str(tmp_path / "flow")) == str(tmp_path / "flow")
    prepare_dataset(SPEC, tmp_path / "lib")
    flow_files, lib_files = _contents(tmp_path / "flow"), _contents(tmp_path / "lib")
    assert len([n for n in flow_files if n.endswith(".parquet")]) == 4  # 1,000 rows / 300
    assert flow_files == lib_files

    before = _mtimes(tmp_path / "flow")
    prepare(SPEC, str(tmp_path / "flow"))
    assert _mtimes(tmp_path / "flow") == before
