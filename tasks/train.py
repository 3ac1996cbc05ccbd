"""`train_model`: one training worker as a child process, watched, timed out, resumable.

In-process TensorFlow cannot be interrupted, never returns GPU memory and takes the flow run
down with it on OOM or a segfault; a child process (`python -m diffusion_lib.training`) can be
killed as a process group and its exit status read. A retry of this task starts a new child,
which resumes from the run directory's latest checkpoint.
"""

from __future__ import annotations

import collections
import json
import os
import pathlib
import queue
import signal
import socket
import subprocess
import sys
import threading
import time

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.context import TaskRunContext

from diffusion_lib import run_lock
from diffusion_lib.training.worker_protocol import EXIT_MEANINGS, PARENT_ENV
from tasks.presets import TrainPart
from tasks.progress import Eta, run_logger, show_progress
from tasks.retries import worth_retrying
from tasks.startup_noise import is_noise, noise_patterns


class TrainingFailed(RuntimeError):
    """A training worker's failure. Crashes, kills and timeouts are retried (a retry resumes from
    the latest checkpoint); bad input (exit 2) and divergence (exit 3) are `permanent`: they
    fail the same way every time."""

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        self.exit_code = exit_code
        self.permanent = exit_code in EXIT_MEANINGS


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def worker_environments(workers: int, visible_devices: str | None) -> list[dict]:
    """One environment per local training worker: TF_CONFIG naming all of them on localhost
    (none for a single worker) and an even share of the visible GPUs, if any are listed."""
    if workers == 1:
        return [{}]
    hosts = [f"localhost:{port}" for port in _free_ports(workers)]
    devices = [d for d in (visible_devices or "").split(",") if d]
    if devices and len(devices) % workers:
        raise ValueError(
            f"workers: {len(devices)} visible GPUs do not split over {workers} workers"
        )
    share = len(devices) // workers
    return [
        {
            "TF_CONFIG": json.dumps(
                {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}}
            ),
            **(
                {"CUDA_VISIBLE_DEVICES": ",".join(devices[index * share : (index + 1) * share])}
                if devices
                else {}
            ),
        }
        for index in range(workers)
    ]


TAIL_LINES = 40


def _event(line: str) -> dict | None:
    """The worker's JSON event on this line, or None for any other output."""
    if not line.startswith("{"):
        return None
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return None
    return event if isinstance(event, dict) and "event" in event else None


def _why(error: dict | None, tail, logger) -> str:
    """A failed worker's reason: its error event ("Kind: message"), else the last line of its
    other output that names an error (a traceback's last line, a fatal TensorFlow line), else
    its last line; its output's last lines go to the log either way. TensorFlow's start-up
    notices are passed over: its "failed call to cuInit" on a host without a GPU driver names
    an error but no reason, and was given as the reason of a worker killed by a signal."""
    if tail:
        logger.error("last lines of the worker's output:\n%s", "\n".join(tail))
    if error is not None:
        return f"{error['kind']}: {error['message']}"
    noise = noise_patterns()
    lines = [line for line in tail if line.strip()]
    reasons = [line for line in lines if not is_noise(line, noise)]
    named = [line for line in reasons if "Error" in line or "error" in line or "Killed" in line]
    if named:
        return named[-1].strip()
    if reasons:
        return reasons[-1].strip()
    return "no output beyond TensorFlow's start-up notices" if lines else "no output"


def _meaning(code: int) -> str:
    """An exit status in words: the worker protocol's codes, else the signal that ended it."""
    if code in EXIT_MEANINGS:
        return EXIT_MEANINGS[code]
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return "failed"


def _stream(index: int, proc: subprocess.Popen, lines: queue.Queue) -> None:
    for line in proc.stdout:
        lines.put((index, line.rstrip()))
    lines.put((index, None))


@task(retries=2, retry_delay_seconds=10, retry_condition_fn=worth_retrying)
def train_model(
    config: dict,
    run_dir: str,
    timeout_seconds: float = 3600.0,
    env: dict | None = None,
    workers: int = 1,
) -> dict:
    """Trains `config` (a TrainConfig dict) in `run_dir` with `workers` child processes on this
    host (MultiWorkerMirroredStrategy when more than one); returns {"step", "checkpoint", "loss"}.

    The chief's (worker 0's) JSON lines drive the log and the progress artifact; any worker
    failing, or the deadline passing, kills every worker's process group."""
    logger = run_logger("tasks.train")
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
    base_env = {**os.environ, **(env or {})}
    # The flow's lock on the run directory goes to the chief worker with its open file, so the
    # worker holds it too (and keeps it if the flow dies first); without one it locks alone.
    lock_env, lock_fds = run_lock.inheritance(run_dir)
    lines: queue.Queue = queue.Queue()
    procs = []
    for index, extra in enumerate(
        worker_environments(workers, base_env.get("CUDA_VISIBLE_DEVICES"))
    ):
        proc = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            # PARENT_ENV: the worker dies with this process (it has a process group of its own).
            env={
                **base_env,
                **extra,
                **(lock_env if index == 0 else {}),
                PARENT_ENV: str(os.getpid()),
            },
            pass_fds=lock_fds if index == 0 else (),
        )
        procs.append(proc)
        threading.Thread(target=_stream, args=(index, proc, lines), daemon=True).start()
    total = int(config.get("num_steps", 1))
    progress_id = (
        create_progress_artifact(
            progress=0.0, key="training-progress", description=f"training {run.name}: starting"
        )
        if in_run
        else None
    )
    deadline = time.monotonic() + timeout_seconds
    steps_eta = Eta(total)
    last, open_streams, failed = None, len(procs), None
    # Per worker: its error event, and its last lines of other output (a traceback, TensorFlow's
    # own error lines), which a failure quotes.
    errors: dict[int, dict] = {}
    starts: dict[int, int] = {}  # the step each worker starts from
    disagree = None
    tails = [collections.deque(maxlen=TAIL_LINES) for _ in procs]
    try:
        while open_streams:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TrainingFailed(
                    f"training in {run_dir} exceeded {timeout_seconds:.0f} s; killed its process group"
                )
            try:
                index, line = lines.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                continue
            if line is None:
                open_streams -= 1
                code = procs[index].wait()
                if code != 0 and failed is None:
                    failed = index
                    break  # one worker down: the others would wait for it forever
                continue
            event = _event(line)
            if event is None:
                tails[index].append(line)
                continue
            if event["event"] == "error":
                errors[index] = event
                logger.error("worker %d: %s: %s", index, event["kind"], event["message"])
            if event["event"] == "warning":
                logger.warning("worker %d: %s", index, event["message"])
            if event["event"] == "start":
                starts[index] = event["step"]
                if len(set(starts.values())) > 1:
                    disagree = f"the workers restored different steps: {starts}; killed them all"
                    break
                if index == 0:
                    show_progress("train", event["step"], total, f"training {run.name}")
                    logger.info(
                        "%s at step %d of %d on %d replica(s), computing in %s",
                        "resuming" if event["step"] else "starting",
                        event["step"],
                        event["total"],
                        event["replicas"],
                        event["precision"],
                    )
            if index != 0:
                continue
            if event["event"] == "progress":
                eta = steps_eta.update(event["step"])
                show_progress("train", event["step"], total, f"training {run.name}")
                logger.info(
                    "step %d/%d loss %.4f %.0f images/s, %s",
                    event["step"],
                    event["total"],
                    event["loss"],
                    event["images_per_sec"],
                    eta,
                )
                if progress_id is not None:
                    update_progress_artifact(
                        progress_id,
                        progress=100.0 * event["step"] / max(total, 1),
                        description=f"training {run.name}: step {event['step']}/{total}, {eta}",
                    )
            last = event
    finally:
        for proc in procs:
            if proc.poll() is None:
                _kill_group(proc)
    if disagree is not None:
        raise TrainingFailed(f"training in {run_dir}: {disagree}")
    if failed is not None:
        code = procs[failed].returncode
        raise TrainingFailed(
            f"training worker {failed} exited with {code} ({_meaning(code)}): "
            + _why(errors.get(failed), tails[failed], logger),
            code,
        )
    if progress_id is not None:
        update_progress_artifact(
            progress_id, progress=100.0, description=f"training {run.name}: done"
        )
    return {
        "step": last["step"],
        "checkpoint": last["checkpoint"],
        "loss": last["loss"],
        "started_from": starts.get(0, 0),  # this attempt's first step: a resumed checkpoint
    }


@task(retries=2, retry_delay_seconds=5, retry_condition_fn=worth_retrying)
def find_warm_start(output_root: str, run_dir: str, part: TrainPart, data_dir: str) -> str:
    """ "RUN_DIR@STEP" of the newest other run's best checkpoint that fits `part` (same
    dataset, network and objective), "" if none; logged either way."""
    from diffusion_lib.evaluation import best_previous_checkpoint

    found = best_previous_checkpoint(output_root, part.config(data_dir), exclude=[run_dir])
    get_run_logger().info("warm start from %s", found or "nothing (no earlier fitting run)")
    return found
