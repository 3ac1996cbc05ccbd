"""`train_model`: training as a task on Ray Train (`diffusion_lib.training.launch`), the
workers' events turned into log lines and a progress artifact. The engine restarts failed
workers from the run directory's latest checkpoint; a retry of the task (after a deadline, or
a cluster that did not start) launches again and resumes the same way."""

from __future__ import annotations

import json
import pathlib

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.context import TaskRunContext

from diffusion_lib.training import TrainConfig
from diffusion_lib.training.launch import TrainingFailed, launch
from tasks.presets import TrainPart
from tasks.progress import Eta, run_logger, show_progress
from tasks.retries import worth_retrying


class _Reporter:
    """`on_event` for the launcher: the workers' errors and warnings, the chief's start and
    progress, in the log, on the console's bar and in the `training-progress` artifact."""

    def __init__(self, name: str, config: dict, logger, artifact):
        self.name, self.logger, self.artifact = name, logger, artifact
        self.total = TrainConfig.from_dict(config).run.num_steps  # a stored config, any version
        self.eta = Eta(self.total)

    def __call__(self, worker: int, event: dict) -> None:
        kind = event["event"]
        if kind == "error":
            self.logger.error("worker %d: %s: %s", worker, event["kind"], event["message"])
        elif kind == "warning":
            self.logger.warning("worker %d: %s", worker, event["message"])
        elif kind == "start" and "pid" in event:
            gpus = f", GPU {event['gpus']}" if event.get("gpus") else ""
            self.logger.info("worker %d: pid %d on %s%s", worker, event["pid"], event["host"], gpus)
        if worker != 0:
            return
        if kind == "start":
            show_progress("train", event["step"], self.total, f"training {self.name}")
            self.logger.info(
                "%s at step %d of %d on %d replica(s), computing in %s",
                "resuming" if event["step"] else "starting",
                event["step"],
                event["total"],
                event["replicas"],
                event["precision"],
            )
        elif kind == "progress":
            self.progress(event)

    def progress(self, event: dict) -> None:
        eta = self.eta.update(event["step"])
        show_progress("train", event["step"], self.total, f"training {self.name}")
        self.logger.info(
            "step %d/%d loss %.4f %.0f images/s, %s",
            event["step"],
            event["total"],
            event["loss"],
            event["images_per_sec"],
            eta,
        )
        self.update(
            100.0 * event["step"] / max(self.total, 1),
            f"training {self.name}: step {event['step']}/{self.total}, {eta}",
        )

    def update(self, progress: float, description: str) -> None:
        if self.artifact is not None:
            update_progress_artifact(self.artifact, progress=progress, description=description)


@task(retries=2, retry_delay_seconds=10, retry_condition_fn=worth_retrying)
def train_model(
    config: dict,
    run_dir: str,
    timeout_seconds: float = 3600.0,
    env: dict | None = None,
    workers: int = 1,
    address: str | None = None,
) -> dict:
    """Trains `config` (a TrainConfig dict) in `run_dir` with `workers` Ray Train workers
    (MultiWorkerMirroredStrategy when more than one) on the Ray cluster at `address`, or a local
    one; returns {"step", "checkpoint", "loss", "started_from"}. A failed worker's last lines
    of output go to the log."""
    run = pathlib.Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    config_path = run / "train-config.json"
    config_path.write_text(json.dumps(config, indent=2))
    artifact = None
    if TaskRunContext.get() is not None:
        artifact = create_progress_artifact(
            progress=0.0, key="training-progress", description=f"training {run.name}: starting"
        )
    logger = run_logger("tasks.train")
    report = _Reporter(run.name, config, logger, artifact)
    try:
        done = launch(
            str(config_path),
            run_dir,
            workers=workers,
            env=env,
            timeout_seconds=timeout_seconds,
            on_event=report,
            address=address,
        )
    except TrainingFailed as failure:
        if failure.tail:
            logger.error("last lines of the worker's output:\n%s", "\n".join(failure.tail))
        raise
    report.update(100.0, f"training {run.name}: done")
    return {
        "step": done.step,
        "checkpoint": done.checkpoint,
        "loss": done.loss,
        "started_from": done.started_from,  # the chief's last start: a resumed checkpoint
    }


@task(retries=2, retry_delay_seconds=5, retry_condition_fn=worth_retrying)
def find_warm_start(output_root: str, run_dir: str, part: TrainPart, data_dir: str) -> str:
    """ "RUN_DIR@STEP" of the newest other run's best checkpoint that fits `part` (same
    dataset, network and objective), "" if none; logged either way."""
    from diffusion_lib.evaluation import best_previous_checkpoint

    found = best_previous_checkpoint(output_root, part.config(data_dir), exclude=[run_dir])
    get_run_logger().info("warm start from %s", found or "nothing (no earlier fitting run)")
    return found
