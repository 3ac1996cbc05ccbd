"""The `train` flow: one training job on a prepared dataset (run `prepare-dataset` first, with
the same run name). A re-run, or a retry of its task, resumes from the latest checkpoint."""

from __future__ import annotations

from prefect import flow

from diffusion_lib.run import Run
from diffusion_lib.run_lock import writing
from flows.api_watch import watching_stage
from flows.params import Minutes, Model, Positive, Preset, RunName, described
from tasks.presets import resolve
from tasks.train import find_warm_start, train_model

PROG = "python -m flows.train"


@flow(name="train", log_prints=True)
@described
def train_flow(
    preset: Preset,
    run_name: RunName,
    output_root: str = "runs",
    model: Model | None = None,
    steps: Positive | None = None,
    batch_size: Positive | None = None,
    workers: Positive = 1,
    timeout_minutes: Minutes = 120.0,
    warm_start: bool = False,
) -> dict:
    """Returns {"step", "checkpoint", "loss"}. With `warm_start`, a new run starts from the best
    checkpoint of the newest other run under `output_root` that trained the same network and
    objective (and from scratch if there is none)."""
    given = dict(locals())  # this flow's parameters, before any other name is bound
    plan = resolve(preset, model, steps=steps, batch_size=batch_size)
    run = Run.at(output_root, run_name)
    run_dir, part, data_dir = str(run.path), plan.train, str(run.data_dir("train"))
    if warm_start:
        part = part.replace(init_from=find_warm_start(output_root, run_dir, part, data_dir))
    config = part.config(data_dir).to_dict()
    with writing(run.path), watching_stage(train_flow, PROG, given):
        return train_model(config, run_dir, timeout_seconds=timeout_minutes * 60, workers=workers)


if __name__ == "__main__":
    from flows.cli import run_cli

    run_cli(train_flow, prog=PROG)
