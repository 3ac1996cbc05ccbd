"""`evaluate_checkpoints`: score every checkpoint, publish a table with the floors."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_table_artifact

from diffusion_lib.evaluation import EvalSpec
from diffusion_lib.evaluation import evaluate_checkpoints as score_checkpoints


@task(retries=2, retry_delay_seconds=10)
def evaluate_checkpoints(run_dir: str, test_dir: str, settings: dict) -> dict:
    """Returns {"best_step", "best_metric", "metrics_path"} and publishes a metrics table."""
    report = score_checkpoints(run_dir, test_dir=test_dir, spec=EvalSpec(**settings))
    table = []
    for row in report.rows:
        entry = {"step": row["step"]}
        for name, value in row["metrics"].items():
            entry[name] = round(value["value"], 5)
            if value["floor"] is not None:
                entry[f"{name} (floor)"] = round(value["floor"], 5)
        table.append(entry)
    create_table_artifact(
        table=table,
        key="checkpoint-metrics",
        description=f"metrics per checkpoint, each beside its real-vs-real floor (n={settings.get('n')})",
    )
    return {
        "best_step": report.best_step,
        "best_metric": report.best_metric,
        "metrics_path": report.path,
    }
