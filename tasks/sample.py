"""Sample-set tasks: plan (builds the sample set's spec once), one task per shard (mapped),
finalize. The shard tasks take the spec the plan built; none of them loads weights unless it
has a shard to draw."""

from __future__ import annotations

from prefect import task

from diffusion_lib.data import DatasetSpec, finalize_dataset, plan_dataset, prepare_shard
from diffusion_lib.sample_sets import sample_set_spec
from tasks.presets import SampleSetPart


@task(retries=2, retry_delay_seconds=5)
def plan_samples(run_dir: str, part: SampleSetPart, step: int | None) -> tuple[DatasetSpec, int]:
    """The sample set's spec (a preset's `samples` part, checkpoint `step`) and its shard count."""
    spec = sample_set_spec(run_dir, step=step, **part.options())
    return spec, plan_dataset(spec).num_shards


@task(retries=3, retry_delay_seconds=5)
def sample_shards(spec: DatasetSpec, out_dir: str, index: int) -> str:
    """Draws sample shard `index` (idempotent: a good shard is kept); returns its file."""
    return prepare_shard(spec, out_dir, index).file


@task(retries=2, retry_delay_seconds=5)
def finalize_samples(spec: DatasetSpec, out_dir: str, shard_files: list[str]) -> str:
    finalize_dataset(spec, out_dir)
    return out_dir
