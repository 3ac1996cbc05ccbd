"""Starting and watching training workers, behind one interface so the engine can change.

    launch(config_path, run_dir, workers=N, env=..., timeout_seconds=..., on_event=fn)
        -> Launched(step, checkpoint, loss, started_from)

runs `python -m diffusion_lib.training` once per worker, passes each worker's JSON events
(`{"event": "start" | "progress" | "warning" | "error" | "done", ...}`) to `on_event(worker,
event)` as they come, and raises `TrainingFailed` naming the worker and its reason when one
fails, the workers restore different steps, or the deadline passes. This is the local engine:
child processes on this host (MultiWorkerMirroredStrategy over TF_CONFIG on 127.0.0.1 when
there are several), each in a process group of its own, killed as a group.

A child process rather than TensorFlow in the caller: in-process TensorFlow cannot be
interrupted, never returns GPU memory, and takes its caller down with it on OOM or a segfault.
A worker started again resumes from the run directory's latest checkpoint.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from diffusion_lib import run_lock
from diffusion_lib.training.startup_noise import is_noise, noise_patterns
from diffusion_lib.training.worker_protocol import EXIT_MEANINGS, PARENT_ENV

TAIL_LINES = 40
OnEvent = Callable[[int, dict], None]


class TrainingFailed(RuntimeError):
    """A training worker's failure. Crashes, kills and timeouts are worth another attempt (it
    resumes from the latest checkpoint); bad input (exit 2) and divergence (exit 3) are
    `permanent`: they fail the same way every time. `tail` holds the failed worker's last lines
    of output."""

    def __init__(self, message: str, exit_code: int | None = None, tail: tuple[str, ...] = ()):
        super().__init__(message)
        self.exit_code = exit_code
        self.permanent = exit_code in EXIT_MEANINGS
        self.tail = tail


@dataclasses.dataclass(frozen=True)
class Launched:
    """The chief's last report of a finished run, and the step this launch started from (a
    resumed checkpoint, or 0)."""

    step: int
    checkpoint: str
    loss: float | None
    started_from: int


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


def parse_event(line: str) -> dict | None:
    """The worker's JSON event on this line, or None for any other output."""
    if not line.startswith("{"):
        return None
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return None
    return event if isinstance(event, dict) and "event" in event else None


def failure_reason(error: dict | None, tail) -> str:
    """A failed worker's reason: its error event ("Kind: message"), else the last line of its
    other output that names an error (a traceback's last line, a fatal TensorFlow line), else
    its last line. TensorFlow's start-up notices are passed over: its "failed call to cuInit" on
    a host without a GPU driver names an error but no reason, and was given as the reason of a
    worker killed by a signal."""
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


def exit_meaning(code: int) -> str:
    """An exit status in words: the worker protocol's codes, else the signal that ended it."""
    if code in EXIT_MEANINGS:
        return EXIT_MEANINGS[code]
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return "failed"


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _stream(index: int, proc: subprocess.Popen, lines: queue.Queue) -> None:
    for line in proc.stdout:
        lines.put((index, line.rstrip()))
    lines.put((index, None))


def _start_workers(config_path: str, run_dir: str, workers: int, env: dict, lines: queue.Queue):
    """The worker processes, each streaming its output lines into `lines` as (index, line)."""
    command = [sys.executable, "-m", "diffusion_lib.training"]
    command += ["--config", str(config_path), "--run-dir", str(run_dir)]
    # The caller's lock on the run directory goes to the chief worker with its open file, so the
    # worker holds it too (and keeps it if the caller dies first); without one it locks alone.
    lock_env, lock_fds = run_lock.inheritance(run_dir)
    procs = []
    for index, extra in enumerate(worker_environments(workers, env.get("CUDA_VISIBLE_DEVICES"))):
        proc = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            # PARENT_ENV: the worker dies with this process (it has a process group of its own).
            env={**env, **extra, **(lock_env if index == 0 else {}), PARENT_ENV: str(os.getpid())},
            pass_fds=lock_fds if index == 0 else (),
        )
        procs.append(proc)
        threading.Thread(target=_stream, args=(index, proc, lines), daemon=True).start()
    return procs


class _Watch:
    """What the watching loop keeps of each worker: its error event, its other output's last
    lines (which a failure quotes), the step it started from; and the chief's last event."""

    def __init__(self, workers: int):
        self.errors: dict[int, dict] = {}
        self.starts: dict[int, int] = {}
        self.tails = [collections.deque(maxlen=TAIL_LINES) for _ in range(workers)]
        self.last: dict | None = None

    def take(self, index: int, line: str, on_event: OnEvent) -> str | None:
        """Takes one output line; returns why every worker must stop, or None."""
        event = parse_event(line)
        if event is None:
            self.tails[index].append(line)
            return None
        if event["event"] == "error":
            self.errors[index] = event
        if event["event"] == "start":
            self.starts[index] = event["step"]
            if len(set(self.starts.values())) > 1:
                return f"the workers restored different steps: {self.starts}; killed them all"
        if index == 0:
            self.last = event
        on_event(index, event)
        return None


def launch(
    config_path: str,
    run_dir: str,
    *,
    workers: int = 1,
    env: dict | None = None,
    timeout_seconds: float = 3600.0,
    on_event: OnEvent = lambda worker, event: None,
) -> Launched:
    """Trains the TrainConfig in `config_path` in `run_dir` with `workers` worker processes on
    this host; `env` is added to this process's environment. Any worker failing, or the
    deadline passing, kills every worker's process group and raises TrainingFailed."""
    lines: queue.Queue = queue.Queue()
    procs = _start_workers(config_path, run_dir, workers, {**os.environ, **(env or {})}, lines)
    deadline = time.monotonic() + timeout_seconds
    watch, open_streams, failed, stop = _Watch(len(procs)), len(procs), None, None
    try:
        while open_streams and stop is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TrainingFailed(
                    f"training in {run_dir} exceeded {timeout_seconds:.0f} s; killed its process group"
                )
            try:
                index, line = lines.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                continue
            if line is not None:
                stop = watch.take(index, line, on_event)
                continue
            open_streams -= 1
            if procs[index].wait() != 0:
                failed = index
                break  # one worker down: the others would wait for it forever
    finally:
        for proc in procs:
            if proc.poll() is None:
                _kill_group(proc)
    if stop is not None:
        raise TrainingFailed(f"training in {run_dir}: {stop}")
    if failed is not None:
        code, tail = procs[failed].returncode, tuple(watch.tails[failed])
        reason = failure_reason(watch.errors.get(failed), tail)
        raise TrainingFailed(
            f"training worker {failed} exited with {code} ({exit_meaning(code)}): {reason}",
            code,
            tail,
        )
    last = watch.last
    return Launched(last["step"], last["checkpoint"], last["loss"], watch.starts.get(0, 0))
