"""Sample-set tasks: plan (builds the sample set's spec once), one task per shard (mapped),
finalize. The shard tasks take the spec the plan built; none of them loads weights unless it
has a shard to draw, and a process (a cluster's worker too) loads them once for all the shards
it draws."""

from __future__ import annotations

import os
import socket

from prefect import task

from diffusion_lib.data import DatasetSpec, plan_dataset, prepare_shard
from diffusion_lib.sample_sets import make_room, sample_set_spec, weight_loads
from tasks.data import finalize_shards
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
# functions write it, under task names of their own in the UI.
@task(retries=3, retry_delay_seconds=5, retry_condition_fn=worth_retrying)
def sample_shards(spec: DatasetSpec, directory: str, index: int) -> str:
    """Draws shard `index` of the sample set (kept if already good); returns its file name and
    logs which process drew it and how often that process has loaded weights."""
    name = prepare_shard(spec, directory, index).file
    run_logger("tasks.sample").info(
        f"shard {index} ({name}) by process {os.getpid()} on {socket.gethostname()}, "
        f"which has loaded weights {weight_loads()} time(s)"
    )
    return name


finalize_samples = finalize_shards.with_options(name="finalize_samples")
