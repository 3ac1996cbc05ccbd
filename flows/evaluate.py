"""The `evaluate` flow: score every checkpoint of a run not scored yet, against the preset's
test set, each metric beside its real-versus-real floor."""

from __future__ import annotations

from prefect import flow

from flows.params import Model, Preset, RunName, data_directory, run_directory
from tasks.evaluate import evaluate_checkpoints
from tasks.presets import resolve


@flow(name="evaluate", log_prints=True)
def evaluate(
    preset: Preset, run_name: RunName, output_root: str = "runs", model: Model = "ddpm"
) -> dict:
    """Returns {"best_step", "best_metric", "metrics_path"}."""
    plan = resolve(preset, model)
    run_dir = run_directory(output_root, run_name)
    return evaluate_checkpoints(run_dir, data_directory(run_dir, "test"), plan["eval"])
