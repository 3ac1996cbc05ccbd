"""The `prepare-dataset` flow: a preset's train and test sets as Parquet shards, one task per
shard. Re-running it rebuilds only missing or corrupt shards."""

from __future__ import annotations

from prefect import flow, runtime
from prefect.utilities.annotations import unmapped

from diffusion_lib.data import DatasetSpec
from diffusion_lib.run import Run
from diffusion_lib.run_lock import writing
from flows.params import (
    Model,
    Preset,
    RunName,
    default_run_name,
    described,
)
from tasks.data import finalize_shards, plan_shards, prepare_shards
from tasks.presets import resolve


def _prepare(spec: DatasetSpec, directory: str) -> str:
    count = plan_shards(spec)
    futures = prepare_shards.map(unmapped(spec), unmapped(directory), range(count))
    # .result() raises the first failed shard's error, so the stage fails with it: handed the
    # futures, the manifest task was left NotReady and the stage reported Completed.
    return finalize_shards(spec, directory, futures.result())


@flow(name="prepare-dataset", log_prints=True)
@described
def prepare_dataset_flow(
    preset: Preset = "tiny",
    output_root: str = "runs",
    run_name: RunName | None = None,
    model: Model | None = None,
) -> dict:
    """Returns {"train": dir, "test": dir} under <output_root>/<run_name>/data/."""
    plan = resolve(preset, model)
    run = Run.at(output_root, run_name or default_run_name(preset, runtime.flow_run.name))
    with writing(run.path):
        return {
            split: _prepare(getattr(plan, f"{split}_data"), str(run.data_dir(split)))
            for split in ("train", "test")
        }


if __name__ == "__main__":
    from flows.cli import run_cli

    run_cli(prepare_dataset_flow, prog="python -m flows.prepare_dataset")
