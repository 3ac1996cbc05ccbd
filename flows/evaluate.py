"""The `evaluate` flow: score every checkpoint of a run not scored yet, against the preset's
test set, each metric beside its real-versus-real floor."""

from __future__ import annotations

from prefect import flow

from diffusion_lib.run import Run
from diffusion_lib.run_lock import writing
from flows.params import Model, Preset, RunName
from tasks.evaluate import score_checkpoints
from tasks.presets import resolve


@flow(name="evaluate", log_prints=True)
def evaluate_flow(
    preset: Preset, run_name: RunName, output_root: str = "runs", model: Model = "ddpm"
) -> dict:
    """Returns {"best_step", "best_metric", "metrics_path"}."""
    plan = resolve(preset, model)
    run = Run.at(output_root, run_name)
    with writing(run.path):
        return score_checkpoints(str(run.path), str(run.data_dir("test")), plan.eval)
