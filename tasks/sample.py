"""Sample-set tasks: plan (builds the sample set's spec once), one task per shard (mapped),
finalize. The shard tasks take the spec the plan built; none of them loads weights unless it
has a shard to draw."""

from __future__ import annotations

from prefect import task

from diffusion_lib.data import DatasetSpec, plan_dataset
from diffusion_lib.sample_sets import make_room, sample_set_spec
from tasks.data import finalize_shards, prepare_shards
from tasks.presets import SampleSetPart
from tasks.progress import run_logger
from tasks.retries import worth_retrying


@task(retries=2, retry_delay_seconds=5, retry_condition_fn=worth_retrying)
def plan_samples(
    run_dir: str, part: SampleSetPart, step: int | None, samples_dir: str
) -> tuple[DatasetSpec, int]:
    """The sample set's spec (a preset's `samples` part, checkpoint `step`) and its shard count.
    Another set already in `samples_dir` (another checkpoint, sampler or size) is moved beside
    it, so this one can be written there; the same set half-written stays and resumes."""
    spec = sample_set_spec(run_dir, step=step, **part.options())
    moved = make_room(spec, samples_dir)
    if moved is not None:
        run_logger("tasks.sample").info("an earlier sample set of this run was moved to %s", moved)
    return spec, plan_dataset(spec).num_shards


# A sample set is a dataset (source "diffusion_samples"): the same idempotent shard and manifest
# tasks write it, under names of their own in the UI.
sample_shards = prepare_shards.with_options(name="sample_shards")
finalize_samples = finalize_shards.with_options(name="finalize_samples")
