"""Training workers on Ray Train, behind one call:

    launch(config_path, run_dir, workers=N, address=None, env=..., timeout_seconds=...,
           on_event=fn) -> Launched(step, checkpoint, loss, started_from)

Ray Train's TensorflowTrainer starts `workers` workers (one GPU each where the cluster has
them), gives each the TF_CONFIG of MultiWorkerMirroredStrategy when there are several, and
when a worker dies (a crash, a kill, a lost node) starts the group again, up to
`max_failures` times: each start resumes from the run directory's latest checkpoint. The
cluster is the one at `address`, or a local one (`diffusion_lib.cluster.connect`).

Each worker runs `worker.run_worker` and sends the worker protocol's events (`{"event":
"start" | "progress" | "warning" | "error" | "done", ...}`) back through a Ray queue; they
reach `on_event(worker, event)` as they come. Bad input and divergence fail the same way every
time: the workers return, and `TrainingFailed` says so (`permanent`), without another start.
Workers that restore different steps, or a deadline passed, stop every worker (a checkpoint is
written first) and raise `TrainingFailed`.

The run directory's lock stays with the caller: a caller holding it (a flow's `writing`)
lends it to the chief worker for the call; a caller without it leaves the chief to take it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable

from diffusion_lib import run_lock
from diffusion_lib.cluster import connect
from diffusion_lib.training.worker_protocol import BAD_INPUT, EXIT_MEANINGS

OnEvent = Callable[[int, dict], None]
MAX_FAILURES = 2  # worker-group restarts per launch
STOP_GRACE_SECONDS = 60.0  # a stopped worker's time to write its checkpoint and return
_POLL_SECONDS = 0.5


class TrainingFailed(RuntimeError):
    """A training run's failure: bad input (exit status 2) or divergence (3), which fail the
    same way every time; a crash or kill the engine could not get past in its restarts (another
    attempt would only repeat them); both are `permanent`. A deadline passed or workers out of
    step are not. `tail` holds the failed worker's last lines of output."""

    def __init__(
        self,
        message: str,
        exit_code: int | None = None,
        tail: tuple[str, ...] = (),
        permanent: bool | None = None,
    ):
        super().__init__(message)
        self.exit_code = exit_code
        self.permanent = exit_code in EXIT_MEANINGS if permanent is None else permanent
        self.tail = tail


@dataclasses.dataclass(frozen=True)
class Launched:
    """The chief's last report of a finished run, and the step this launch started from (a
    resumed checkpoint, or 0)."""

    step: int
    checkpoint: str
    loss: float | None
    started_from: int


def _train_loop(params: dict) -> None:
    """One Ray Train worker: `run_worker` on the run, its events into the launcher's queue."""
    # Ray Train asks TensorFlow for its Keras 2 (tf_keras); the project is Keras 3.
    os.environ.pop("TF_USE_LEGACY_KERAS", None)
    os.environ.update(params["env"])
    # Paths in the config (its data directory) are read as the caller reads them: from the
    # caller's working directory, where this host has it (Ray starts a worker in its own).
    if os.path.isdir(params["cwd"]):
        os.chdir(params["cwd"])
    from ray import train

    from diffusion_lib.training.config import TrainConfig
    from diffusion_lib.training.worker import run_worker

    rank = train.get_context().get_world_rank()
    events, control = params["events"], params["control"]
    if rank == 0:
        os.environ.update(params["chief_env"])

    where = {  # which process a start is, for the log and for an operator's kill -9
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "gpus": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
    }

    def emit(event: str, **fields) -> None:
        events.put((rank, {"event": event, **fields, **(where if event == "start" else {})}))

    stop = threading.Event()

    def watch_control() -> None:  # the launcher asks every worker to stop by one message
        while not stop.is_set():
            if control.size():
                stop.set()
            time.sleep(1.0)

    threading.Thread(target=watch_control, daemon=True).start()
    threading.Thread(target=_die_with_the_node, daemon=True).start()

    def make_config():
        with open(params["config_path"]) as handle:
            return TrainConfig.from_dict(json.load(handle))

    code = run_worker(make_config, params["run_dir"], emit=emit, should_stop=stop.is_set)
    stop.set()
    if code not in (0, *EXIT_MEANINGS):
        raise RuntimeError(f"training worker {rank} failed (its error event says why)")


def _die_with_the_node() -> None:
    """Ends this worker the moment its node's raylet (its parent) is gone: killed with the
    job's process group, or with the process that started a local cluster (the raylet shares
    its fate). Ray would end the worker too, seconds later; a worker writing a checkpoint into a
    run that a re-run is taking over must not outlive it by those seconds."""
    parent = os.getppid()
    while os.getppid() == parent:
        time.sleep(0.1)
    os._exit(1)


class _Watch:
    """What the launcher keeps of each worker: its last error event, the step each worker of
    the current start restored, and the chief's last event."""

    def __init__(self):
        self.errors: dict[int, dict] = {}
        self.starts: dict[int, int] = {}
        self.restarts = 0
        self.last: dict | None = None
        self.chief_start = 0  # the step the chief's latest start restored

    def take(self, index: int, event: dict, on_event: OnEvent) -> str | None:
        """Takes one event; returns why every worker must stop, or None."""
        kind = event["event"]
        if kind == "error":
            self.errors[index] = event
        if kind == "start":
            if index in self.starts:  # the engine started the group again
                self.starts, self.restarts = {}, self.restarts + 1
            self.starts[index] = event["step"]
            if index == 0:
                self.chief_start = event["step"]
            if len(set(self.starts.values())) > 1:
                return f"the workers restored different steps: {self.starts}; stopped them all"
        if index == 0:
            self.last = event
        on_event(index, event)
        return None

    def permanent(self) -> dict | None:
        """The error event of bad input or divergence, if a worker sent one."""
        found = [e for e in self.errors.values() if e.get("code") in EXIT_MEANINGS]
        return found[0] if found else None


def _reason(event: dict | None, engine_error: BaseException | None = None) -> str:
    if event is not None:
        return f"{event['kind']}: {event['message']}"
    if engine_error is not None:  # the engine's account: the worker sent no error of its own
        lines = [line for line in str(engine_error).splitlines() if line.strip()]
        return f"{type(engine_error).__name__}: {' '.join(lines[-3:])[:1000]}"
    return "no error reported"


def launch(
    config_path: str,
    run_dir: str,
    *,
    workers: int = 1,
    env: dict | None = None,
    timeout_seconds: float = 3600.0,
    on_event: OnEvent = lambda worker, event: None,
    address: str | None = None,
    max_failures: int = MAX_FAILURES,
) -> Launched:
    """Trains the TrainConfig in `config_path` in `run_dir` with `workers` Ray Train workers
    (module docstring); `env` is added to the workers' environment."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.tensorflow import TensorflowTrainer
    from ray.util.queue import Queue

    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    _preflight(config_path, run_dir)
    lock_env = run_lock.lent(run_dir)
    cluster = connect(address)
    with tempfile.TemporaryDirectory() as scratch:
        use_gpu = cluster.gpus >= workers
        per_worker = {"GPU": 1} if use_gpu else {}
        if cluster.local:  # this host's CPUs shared out, so each worker's threads fit
            per_worker["CPU"] = max(1, cluster.cpus // workers)
        events, control = Queue(), Queue()
        trainer = TensorflowTrainer(
            _train_loop,
            train_loop_config={
                "config_path": os.path.abspath(config_path),
                "run_dir": os.path.abspath(run_dir),
                "cwd": os.getcwd(),
                "env": {k: str(v) for k, v in (env or {}).items()},
                "chief_env": lock_env,
                "events": events,
                "control": control,
            },
            scaling_config=ScalingConfig(
                num_workers=workers, use_gpu=use_gpu, resources_per_worker=per_worker or None
            ),
            run_config=RunConfig(
                name="train",
                storage_path=scratch,
                failure_config=FailureConfig(max_failures=max_failures),
            ),
        )
        outcome: dict = {}

        def fit() -> None:
            try:
                trainer.fit()
            except Exception as err:  # noqa: BLE001 - reported by the launcher below
                outcome["error"] = err
            finally:
                outcome["done"] = True

        fitting = threading.Thread(target=fit, daemon=True)
        fitting.start()
        watch = _Watch()
        stop_reason = _watch_events(
            watch, events, control, outcome, on_event, run_dir, timeout_seconds
        )
        fitting.join(STOP_GRACE_SECONDS if stop_reason else None)
        _drain(watch, events, on_event)
    return _result(watch, outcome, stop_reason, run_dir, max_failures)


def _preflight(config_path: str, run_dir: str) -> None:
    """The bad input a worker would meet first (the config, its dataset, what it asks of the
    data), found before any worker starts: TrainingFailed with the workers' own message."""
    from diffusion_lib.data import DataError, open_dataset
    from diffusion_lib.training.config import TrainConfig, check_against_data

    try:
        with open(config_path) as handle:
            config = TrainConfig.from_dict(json.load(handle))
        # The replicas' count is the workers' to find; what divides by it is checked there.
        check_against_data(config, open_dataset(config.data.data_dir), replicas=1)
    except (DataError, OSError, ValueError, TypeError) as err:
        event = {"kind": type(err).__name__, "message": str(err)}
        raise _for_good(run_dir, BAD_INPUT, event) from None


def _watch_events(watch, events, control, outcome, on_event, run_dir, timeout_seconds):
    """Passes events on until the fit ends; returns why the workers were stopped, if they were."""
    deadline = time.monotonic() + timeout_seconds
    while not outcome.get("done"):
        for index, event in _take(events):
            reason = watch.take(index, event, on_event)
            if reason is not None:
                control.put("stop")
                return f"training in {run_dir}: {reason}"
        if time.monotonic() > deadline:
            control.put("stop")
            return f"training in {run_dir} exceeded {timeout_seconds:.0f} s; stopped its workers"
        time.sleep(_POLL_SECONDS)
    return None


def _for_good(run_dir: str, code: int, event: dict) -> TrainingFailed:
    """The failure of bad input or divergence (`code`), with the error `event`'s account."""
    return TrainingFailed(
        f"training in {run_dir} failed for good ({EXIT_MEANINGS[code]}): {_reason(event)}", code
    )


def _take(events) -> list:
    waiting = events.size()  # one call to the queue's actor, not two
    return events.get_nowait_batch(waiting) if waiting else []


def _drain(watch, events, on_event) -> None:
    for index, event in _take(events):
        watch.take(index, event, on_event)


def _result(watch, outcome, stop_reason, run_dir, max_failures) -> Launched:
    if stop_reason is not None:
        raise TrainingFailed(stop_reason)
    permanent = watch.permanent()
    if permanent is not None:
        raise _for_good(run_dir, permanent["code"], permanent)
    if "error" in outcome:
        index, event = min(watch.errors.items(), default=(None, None))  # the lowest rank's
        who = f"worker {index}" if index is not None else "a worker"
        raise TrainingFailed(
            f"training in {run_dir}: {who} failed after {max_failures} restart(s) by the "
            f"engine: {_reason(event, outcome['error'])}",
            tail=tuple((event or {}).get("tail", ())),
            permanent=True,
        )
    last = watch.last
    if last is None or last["event"] != "done":
        raise TrainingFailed(f"training in {run_dir} ended without a result from its chief worker")
    return Launched(last["step"], last["checkpoint"], last["loss"], watch.chief_start)
