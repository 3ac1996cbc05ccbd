"""The sample-set tasks: the plan counts shards without loading weights, a process loads them
once for all its shards, and the shard and manifest tasks write the library's sample set."""

import dataclasses
import json

import numpy as np
from prefect import flow
from prefect.utilities.annotations import unmapped

from diffusion_lib.run import Run
from diffusion_lib.sample_sets import generate_samples
from diffusion_lib.samplers import SamplerSpec
from tasks.data import finalize_shards, prepare_shards
from tasks.presets import SampleSetPart
from tasks.sample import finalize_samples, plan_samples, sample_shards

PART = SampleSetPart(
    n=96, sampler=SamplerSpec.of("ddim", num_steps=10), rows_per_shard=40, chunk_rows=20
)


def test_the_sample_tasks_retry_as_the_dataset_tasks_do():
    assert finalize_samples.fn is finalize_shards.fn and finalize_samples.name == "finalize_samples"
    assert sample_shards.retries == prepare_shards.retries
    assert sample_shards.retry_condition_fn is prepare_shards.retry_condition_fn


def test_a_process_loads_the_weights_once_for_all_its_shards(toy_ddpm_run, tmp_path, monkeypatch):
    restored = []
    restore = Run.restore

    def counted(self, step=None, **kwargs):
        restored.append(step)
        return restore(self, step, **kwargs)

    monkeypatch.setattr(Run, "restore", counted)
    for step, shards in ((200, [0]), (100, [0, 1, 2])):
        restored.clear()
        spec, count = plan_samples.fn(str(toy_ddpm_run), PART, step, str(tmp_path / f"{step}"))
        for index in shards:
            sample_shards.fn(spec, str(tmp_path / f"{step}"), index)
    # Once for three shards; the checkpoint drawn from before is not kept once another is.
    assert restored == [100]
    assert len(list((tmp_path / "100").glob("shard-*.parquet"))) == count == 3


def test_planning_a_sample_set_loads_no_weights(toy_ddpm_run, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("plan_samples restored a checkpoint")

    monkeypatch.setattr(Run, "restore", refuse)
    spec, count = plan_samples.fn(str(toy_ddpm_run), PART, None, str(toy_ddpm_run / "no-samples"))
    assert count == 3  # 96 rows in shards of 40
    assert dict(spec.options)["step"] == 200  # None resolves to the latest checkpoint


@flow
def sample(run_dir: str, out_dir: str) -> str:
    spec, count = plan_samples(run_dir, PART, 100, out_dir)
    files = sample_shards.map(unmapped(spec), unmapped(out_dir), range(count))
    return finalize_samples(spec, out_dir, files.result())


def test_mapped_sample_tasks_write_the_librarys_sample_set(prefect_server, toy_ddpm_run, tmp_path):
    sample(str(toy_ddpm_run), str(tmp_path / "flow"))
    generate_samples(toy_ddpm_run, tmp_path / "lib", step=100, **PART.options())
    shards = sorted(p.name for p in (tmp_path / "lib").glob("*.parquet"))
    assert len(shards) == 3 and shards == sorted(
        p.name for p in (tmp_path / "flow").glob("*.parquet")
    )
    for name in shards:
        assert (tmp_path / "flow" / name).read_bytes() == (tmp_path / "lib" / name).read_bytes()
    manifests = [json.loads((tmp_path / d / "manifest.json").read_text()) for d in ("flow", "lib")]
    for manifest in manifests:
        del manifest["created_at"]
    assert manifests[0] == manifests[1]


def test_a_path_spelling_changes_nothing_and_another_set_goes_beside(
    toy_ddpm_run, tmp_path, monkeypatch
):
    """The set's identity is its checkpoint's content, sampler, seed and layout: the run named
    relative or absolute plans the same set (nothing moved, nothing redrawn); another size is
    the same set, shrunk or extended in place (whole shards kept); another checkpoint moves the
    earlier set beside the directory, intact, instead of refusing."""
    from diffusion_lib.data import open_dataset, prepare_dataset
    from diffusion_lib.sample_sets import sample_set_spec

    out = tmp_path / "samples"
    absolute = sample_set_spec(toy_ddpm_run, step=100, **PART.options())
    prepare_dataset(absolute, out)
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.parquet")}
    monkeypatch.chdir(toy_ddpm_run.parent)
    spec, _ = plan_samples.fn(toy_ddpm_run.name, PART, 100, str(out))
    assert spec.fingerprint() == absolute.fingerprint()
    prepare_dataset(spec, out)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.parquet")} == before
    first = open_dataset(out).read().values

    larger = dataclasses.replace(PART, n=160)
    spec, count = plan_samples.fn(toy_ddpm_run.name, larger, 100, str(out))
    assert count == 4 and not list(tmp_path.glob("samples-*"))  # nothing moved
    prepare_dataset(spec, out)
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("*.parquet")}
    whole = ["shard-00000.parquet", "shard-00001.parquet"]
    assert {name: after[name] for name in whole} == {name: before[name] for name in whole}
    grown = open_dataset(out).read().values
    assert grown.shape[0] == 160
    np.testing.assert_array_equal(grown[:80], first[:80])

    spec, _ = plan_samples.fn(toy_ddpm_run.name, larger, 200, str(out))
    (beside,) = tmp_path.glob("samples-*")
    np.testing.assert_array_equal(open_dataset(beside).read().values, grown)
    assert not out.exists()
