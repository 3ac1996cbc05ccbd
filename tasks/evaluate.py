"""Checkpoint scoring as tasks: `plan_scoring` (checks the inputs and makes the references: the
feature classifier, the held-out features and floors), `score_checkpoint` a checkpoint (mapped,
so several are scored at once where the flow's task runner allows, on a cluster too), and
`publish_metrics` (writes eval/metrics.json, publishes a table of the metrics beside their floors
and logs the chain health of score models). `score_checkpoints` chains them in a flow."""

from __future__ import annotations

import pathlib
import time

from prefect import get_run_logger, task
from prefect.artifacts import (
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.utilities.annotations import unmapped

from diffusion_lib import evaluation
from diffusion_lib.evaluation import EvalPlan, EvalSpec
from diffusion_lib.run import METRICS_NAME
from tasks.progress import Eta, show_progress
from tasks.retries import worth_retrying

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


class SamplingProgress:
    """`progress(f)` for scoring a checkpoint: the artifact is updated at most every 2 s (the
    callback runs between sampler steps), the log every 10%."""

    SCALE = 1000  # the ETA counts thousandths of the work

    def __init__(self, name: str, clock=time.monotonic):
        self.name, self.clock = name, clock
        self.eta = Eta(self.SCALE, clock=clock)
        self.artifact = create_progress_artifact(
            0.0, key="evaluation-progress", description=f"evaluating {name}: sampling"
        )
        self.last_update, self.last_tenth = None, 0

    def __call__(self, fraction: float) -> None:
        eta = self.eta.update(round(fraction * self.SCALE))
        show_progress("evaluate", round(100 * fraction), 100, f"evaluating {self.name} (%)")
        now = self.clock()
        if fraction >= 1.0 or self.last_update is None or now - self.last_update >= 2.0:
            self.last_update = now
            update_progress_artifact(
                self.artifact,
                progress=100.0 * fraction,
                description=f"evaluating {self.name}: sampling, {eta}",
            )
        tenth = int(fraction * 10)
        if tenth > self.last_tenth:
            self.last_tenth = tenth
            get_run_logger().info(f"evaluation sampling {100 * fraction:.0f}%, {eta}")

    def finish(self) -> None:
        """Done (also when every checkpoint was scored before and nothing was sampled)."""
        update_progress_artifact(
            self.artifact, progress=100.0, description=f"evaluating {self.name}: done"
        )


def format_floor(floor: float | None) -> str:
    """A real-versus-real floor as a person reads it. A negative one is an unbiased estimate
    (KID's) of a true value of 0: shown as ~0 with the estimate beside it."""
    if floor is None:
        return "-"
    if floor < 0:
        return f"~0 ({floor:.1e}: unbiased estimate of 0)"
    return f"{floor:.4g}"


def format_ratio(value: float, floor: float | None) -> str:
    """value / floor where it means something (a positive floor), else ''."""
    return f"{value / floor:.2f}x" if floor is not None and floor > 0 else ""


def metrics_table(rows: list, best_step: int | None) -> list[dict]:
    """One row a metric: its floor once, then each checkpoint's value with its ratio to the
    floor (the best step marked). A column a checkpoint, not a column a metric and floor."""
    names: list[str] = []
    for row in rows:
        names += [name for name in row["metrics"] if name not in names]
    table = []
    for name in names:
        floors = [r["metrics"][name]["floor"] for r in rows if name in r["metrics"]]
        floor = next((f for f in floors if f is not None), None)
        entry = {"metric": name, "real-vs-real floor": format_floor(floor)}
        for row in rows:
            label = f"step {row['step']}" + (" (best)" if row["step"] == best_step else "")
            metric = row["metrics"].get(name)
            if metric is None:
                entry[label] = ""
                continue
            ratio = format_ratio(metric["value"], floor)
            entry[label] = f"{metric['value']:.4g}" + (f" ({ratio})" if ratio else "")
        table.append(entry)
    return table


@task(retries=2, retry_delay_seconds=10, retry_condition_fn=worth_retrying)
def plan_scoring(run_dir: str, test_dir: str, spec: EvalSpec, report_name: str) -> EvalPlan:
    """The checkpoints not scored yet, with the references they are scored against made."""
    plan = evaluation.plan_evaluation(
        run_dir, test_dir=test_dir, spec=spec, report_name=report_name
    )
    if plan.todo:
        evaluation.prepare_references(plan)
    return plan


@task(retries=2, retry_delay_seconds=10, retry_condition_fn=worth_retrying)
def score_checkpoint(plan: EvalPlan, step: int) -> dict:
    """Checkpoint `step`'s row of the report; an `evaluation-progress` artifact (with an ETA)
    and a log line every 10% follow its sampling."""
    progress = SamplingProgress(f"{pathlib.Path(plan.run_dir).name} ckpt-{step}")
    row = evaluation.score_checkpoint(plan, step, progress)
    progress.finish()
    return row


@task(retries=2, retry_delay_seconds=10, retry_condition_fn=worth_retrying)
def publish_metrics(plan: EvalPlan, rows: list[dict]) -> dict:
    """Writes the report of `rows` with those scored before; publishes its table."""
    report = evaluation.write_report(plan, rows)
    log_chain_health(rows)
    create_table_artifact(
        table=metrics_table(report.rows, report.best_step),
        key="checkpoint-metrics",
        description=(
            f"each metric at each checkpoint (n={plan.spec.n} samples), with its ratio to the "
            f"real-versus-real floor; best by {report.best_metric}"
        ),
    )
    return {
        "best_step": report.best_step,
        "best_metric": report.best_metric,
        "metrics_path": report.path,
    }


def score_checkpoints(
    run_dir: str, test_dir: str, spec: EvalSpec, report_name: str = METRICS_NAME
) -> dict:
    """In a flow: scores every checkpoint of the run not scored yet with `spec`, each a task of
    its own. Returns {"best_step", "best_metric", "metrics_path"}."""
    plan = plan_scoring(run_dir, test_dir, spec, report_name)
    futures = score_checkpoint.map(unmapped(plan), list(plan.todo))
    return publish_metrics(plan, futures.result())
