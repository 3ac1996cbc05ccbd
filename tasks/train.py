"""`train_model`: one training worker as a child process, watched, timed out, resumable.

In-process TensorFlow cannot be interrupted, never returns GPU memory and takes the flow run
down with it on OOM or a segfault; a child process (`python -m diffusion_lib.training`) can be
killed as a process group and its exit status read. A retry of this task starts a new child,
which resumes from the run directory's latest checkpoint.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.context import TaskRunContext
from prefect.exceptions import MissingContextError

EXIT_MEANINGS = {
    2: "bad input (config, data, run directory or checkpoint)",
    3: "training diverged (NaN/Inf)",
}


class TrainingFailed(RuntimeError):
    pass


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def training_config(settings: dict, data_dir: str) -> dict:
    """A full TrainConfig dict from a preset name plus overrides (validated here, before any work)."""
    from diffusion_lib.training import config_preset

    settings = dict(settings)
    return config_preset(settings.pop("preset"), data_dir=data_dir, **settings).to_dict()


@task(retries=2, retry_delay_seconds=10)
def train_model(
    config: dict, run_dir: str, timeout_seconds: float = 3600.0, env: dict | None = None
) -> dict:
    """Trains `config` (a TrainConfig dict) in `run_dir` in a child process; returns
    {"step", "checkpoint", "loss"}."""
    try:
        logger = get_run_logger()
    except MissingContextError:  # called through .fn(), outside a run
        import logging

        logger = logging.getLogger("tasks.train")
    in_run = TaskRunContext.get() is not None
    run = pathlib.Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    config_path = run / "train-config.json"
    config_path.write_text(json.dumps(config, indent=2))
    command = [
        sys.executable,
        "-m",
        "diffusion_lib.training",
        "--config",
        str(config_path),
        "--run-dir",
        run_dir,
    ]
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, **(env or {})},
    )
    total = int(config.get("num_steps", 1))
    progress_id = (
        create_progress_artifact(progress=0.0, description=f"training {run.name}")
        if in_run
        else None
    )
    deadline = time.monotonic() + timeout_seconds
    last = None
    try:
        for line in proc.stdout:
            if time.monotonic() > deadline:
                raise TrainingFailed(
                    f"training exceeded {timeout_seconds:.0f} s; killed its process group"
                )
            line = line.rstrip()
            if not line.startswith("{"):
                continue  # TensorFlow's own start-up chatter
            event = json.loads(line)
            if event["event"] == "progress":
                logger.info(
                    "step %d/%d loss %.4f %.0f images/s",
                    event["step"],
                    event["total"],
                    event["loss"],
                    event["images_per_sec"],
                )
                if progress_id is not None:
                    update_progress_artifact(
                        progress_id, progress=100.0 * event["step"] / max(total, 1)
                    )
            elif event["event"] == "error":
                logger.error("%s: %s", event["kind"], event["message"])
            last = event
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except (TrainingFailed, subprocess.TimeoutExpired):
        _kill_group(proc)
        raise TrainingFailed(
            f"training in {run_dir} exceeded {timeout_seconds:.0f} s; killed its process group"
        ) from None
    finally:
        if proc.poll() is None:
            _kill_group(proc)
    if proc.returncode != 0:
        meaning = EXIT_MEANINGS.get(proc.returncode, "crashed" if proc.returncode < 0 else "failed")
        detail = last.get("message") if last and last.get("event") == "error" else ""
        raise TrainingFailed(
            f"training worker exited with {proc.returncode} ({meaning}) {detail}".strip()
        )
    if progress_id is not None:
        update_progress_artifact(progress_id, progress=100.0)
    return {"step": last["step"], "checkpoint": last["checkpoint"], "loss": last["loss"]}
