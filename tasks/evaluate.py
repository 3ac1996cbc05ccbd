"""`score_checkpoints`: the library's `evaluate_checkpoints` as a task that publishes a table of
the metrics beside their floors and logs the chain health of score models."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact

from diffusion_lib.evaluation import EvalSpec, evaluate_checkpoints

LAGGING = 2.0  # a level's RMS this far above what it should carry: the chain fell behind


def log_chain_health(rows: list) -> None:
    """One log line per score-model checkpoint: the chain's RMS over the RMS it should carry at
    a few noise levels (about 1 when healthy), and a warning when some level is far above."""
    logger = get_run_logger()
    for row in rows:
        chain = row.get("chain")
        if not chain:
            continue
        picks = sorted({round(i * (len(chain) - 1) / 5) for i in range(6)})
        shown = ", ".join(
            f"sigma {chain[i]['sigma']:.3g}: {chain[i]['rms'] / chain[i]['expected_rms']:.2f}"
            for i in picks
        )
        worst = row["metrics"]["chain_worst_rms_ratio"]["value"]
        line = f"step {row['step']}: chain RMS / expected {shown} (worst {worst:.2f})"
        if worst > LAGGING:
            logger.warning(
                f"{line}: the sampling chain lags behind its noise schedule; raise step_lr "
                "(NCSNv2 technique 4) or steps_per_level"
            )
        else:
            logger.info(line)


@task(retries=2, retry_delay_seconds=10)
def score_checkpoints(run_dir: str, test_dir: str, spec: EvalSpec) -> dict:
    """Returns {"best_step", "best_metric", "metrics_path"} and publishes a metrics table."""
    report = evaluate_checkpoints(run_dir, test_dir=test_dir, spec=spec)
    log_chain_health(report.rows)
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
        description=f"metrics per checkpoint, each beside its real-vs-real floor (n={spec.n})",
    )
    return {
        "best_step": report.best_step,
        "best_metric": report.best_metric,
        "metrics_path": report.path,
    }
