"""Dataset preparation tasks: plan, one task per shard (mapped), finalize."""

from __future__ import annotations

from prefect import task

from diffusion_lib.data import DatasetSpec, finalize_dataset, plan_dataset, prepare_shard
from tasks.retries import worth_retrying


@task(retries=2, retry_delay_seconds=5, retry_condition_fn=worth_retrying)
def plan_shards(spec: DatasetSpec) -> int:
    """The number of shards `spec` makes (a mapped prepare_shards needs it)."""
    return plan_dataset(spec).num_shards


# No result cache here on purpose: prepare_shard is itself idempotent (a good shard is kept after
# a checksum check), which skips finished work on a re-run just as a cache would, and unlike a
# cache it notices a shard corrupted since and rebuilds it.
@task(retries=3, retry_delay_seconds=5, retry_condition_fn=worth_retrying)
def prepare_shards(spec: DatasetSpec, directory: str, index: int) -> str:
    """Prepares shard `index`; returns its file name."""
    return prepare_shard(spec, directory, index).file


@task(retries=2, retry_delay_seconds=5, retry_condition_fn=worth_retrying)
def finalize_shards(spec: DatasetSpec, directory: str, shard_files: list[str]) -> str:
    """Writes the manifest once every shard is in place; returns the dataset directory."""
    finalize_dataset(spec, directory)
    return directory
