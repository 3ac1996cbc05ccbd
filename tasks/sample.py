"""Sample-set tasks: plan, one task per shard (mapped), finalize."""

from __future__ import annotations

from prefect import task

from diffusion_lib.data import finalize_dataset, prepare_shard
from diffusion_lib.data.prepare import plan_dataset
from diffusion_lib.sampling import sample_set_spec


def _spec(run_dir: str, settings: dict, step: int | None):
    settings = dict(settings)
    return sample_set_spec(
        run_dir,
        n=settings.pop("n"),
        sampler=settings.pop("sampler", "ddim"),
        step=step,
        rows_per_shard=settings.pop("rows_per_shard", 5_000),
        **settings,
    )


@task(retries=2, retry_delay_seconds=5)
def plan_samples(run_dir: str, settings: dict, step: int | None) -> int:
    return plan_dataset(_spec(run_dir, settings, step)).num_shards


@task(retries=3, retry_delay_seconds=5)
def generate_samples(
    run_dir: str, settings: dict, step: int | None, out_dir: str, index: int
) -> str:
    """Generates sample shard `index` (idempotent: a good shard is kept); returns its file."""
    return prepare_shard(_spec(run_dir, settings, step), out_dir, index).file


@task(retries=2, retry_delay_seconds=5)
def finalize_samples(
    run_dir: str, settings: dict, step: int | None, out_dir: str, shard_files: list[str]
) -> str:
    finalize_dataset(_spec(run_dir, settings, step), out_dir)
    return out_dir
