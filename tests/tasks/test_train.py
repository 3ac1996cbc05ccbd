"""train_model as a Prefect task on a real local Ray cluster: a SIGKILLed worker is restarted by
the engine and resumes from its checkpoint; bad input fails at once with the worker's message;
a deadline stops the workers; two workers are two replicas; the run's lock holds."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest
from prefect import flow

from diffusion_lib.data import DatasetSpec, prepare_dataset
from diffusion_lib.run_lock import writing
from diffusion_lib.training import committed_steps
from diffusion_lib.training.launch import TrainingFailed, launch
from tasks.presets import TrainPart
from tasks.train import _Reporter, train_model

pytestmark = pytest.mark.cost(50)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("roll")
    prepare_dataset(DatasetSpec.create("swiss_roll", n=4_000), directory)
    return str(directory)


def _toy_config(data_dir, **fields) -> dict:
    """A TrainConfig dict for the tiny MLP on the swiss roll, with `fields` set."""
    return TrainPart.of("toy-ddpm", network="mlp-tiny", **fields).config(data_dir).to_dict()


def test_progress_counts_the_steps_of_the_config(data_dir):
    """The progress artifact's fraction and ETA count the config's own num_steps (a nested
    record; a flat lookup once found none and reported every step as 100x done)."""
    report = _Reporter("r", _toy_config(data_dir, num_steps=1_900), None, None)
    assert report.total == 1_900


def _ray_workers() -> list[psutil.Process]:
    """This process's Ray Train workers (its local cluster's processes are its descendants)."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "RayTrainWorker" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:
            continue
    return found


def _chief_pid(run_dir) -> int | None:
    """The pid the run's lock names: the chief worker's, when it took the lock itself."""
    try:
        return json.loads((run_dir / ".writer.lock").read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None


def _kill_worker_after(checkpoints, step, killed, chief=None, timeout=180):
    """Waits for a committed checkpoint >= step, then SIGKILLs a Ray Train worker: any one, or
    the chief (chief=True) or another (chief=False) by the pid in the run's lock."""
    deadline = time.time() + timeout
    while time.time() < deadline and not killed:
        done = committed_steps(checkpoints)
        if done and done[-1] >= step:
            holder = _chief_pid(checkpoints.parent)
            for worker in _ray_workers():
                if chief is None or (worker.pid == holder) == chief:
                    os.kill(worker.pid, signal.SIGKILL)
                    killed.append(done[-1])
                    return
        time.sleep(0.05)


def _train_with_a_kill(config, run_dir, killer, workers=1):
    """train_model in a flow (retried at once) while `killer(checkpoints, killed)` SIGKILLs a
    worker on a thread; returns the flow's final state once the kill has happened."""
    killed: list[int] = []
    watcher = threading.Thread(target=killer, args=(run_dir / "checkpoints", killed), daemon=True)

    @flow
    def training():
        return train_model.with_options(retry_delay_seconds=0)(
            config, str(run_dir), timeout_seconds=600, workers=workers
        )

    watcher.start()
    state = training(return_state=True)
    watcher.join(timeout=1)
    assert killed, "training finished before the worker could be killed"
    assert state.is_completed(), state.message
    return state, killed


@pytest.mark.system  # CI's second stage: a Ray Train worker killed and restarted, half a minute
def test_sigkilled_worker_is_restarted_by_the_engine_and_resumes(
    prefect_server, data_dir, tmp_path
):
    config = _toy_config(data_dir, num_steps=400, checkpoint_every=100, log_every=100)
    run_dir = tmp_path / "run"
    state, _ = _train_with_a_kill(
        config, run_dir, lambda checkpoints, killed: _kill_worker_after(checkpoints, 200, killed)
    )
    result = state.result()
    assert result["step"] == 400 and result["checkpoint"].endswith("ckpt-400")
    rows = (run_dir / "metrics.jsonl").read_text().splitlines()
    steps = [int(line.split('"step": ')[1].split(",")[0]) for line in rows]
    # The retry resumed after the last checkpoint before the kill, not from step 0.
    assert steps.count(100) == 1 and steps[-1] == 400
    assert 200 <= result["started_from"] < 400  # the engine's restart, in the same attempt


def test_bad_config_fails_with_the_workers_message(prefect_server, data_dir, tmp_path):
    config = _toy_config(str(tmp_path / "missing"), num_steps=10)
    with pytest.raises(TrainingFailed, match=r"failed for good \(bad input .*\).*no manifest.json"):
        train_model.fn(config, str(tmp_path / "run"), timeout_seconds=120)
    with pytest.raises(Exception, match="num_steps"):
        TrainPart.of("toy-ddpm", num_steps=-1)


def test_a_batch_larger_than_the_data_is_bad_input_and_a_fixed_rerun_is_accepted(
    prefect_server, data_dir, tmp_path, monkeypatch
):
    """Bad input (not retried) naming batch_size, before the run directory holds a config; the
    same run with a batch that fits then trains. The run and its data are named relative to the
    caller's working directory (as `make run` names `runs/...`): Ray starts a worker in a
    directory of its own, and the worker still reads and writes where the caller means."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").symlink_to(data_dir)
    config = _toy_config("data", num_steps=4, checkpoint_every=4, log_every=2)
    with pytest.raises(
        TrainingFailed, match=r"for good \(bad input.*batch_size: 100000 is larger than the 4000"
    ):
        too_large = _toy_config("data", num_steps=4, checkpoint_every=4, batch_size=100_000)
        train_model.fn(too_large, "runs/run", timeout_seconds=120)
    assert not (tmp_path / "runs" / "run" / "config.json").exists()
    assert train_model.fn(config, "runs/run", timeout_seconds=120)["step"] == 4
    assert committed_steps(tmp_path / "runs" / "run" / "checkpoints") == [4]


@pytest.mark.system  # kept out of the default run's 5-minute budget
def test_a_deadline_stops_the_workers_after_a_checkpoint(prefect_server, data_dir, tmp_path):
    config = _toy_config(data_dir, num_steps=10**6, checkpoint_every=10**6, log_every=10)
    start = time.time()
    with pytest.raises(TrainingFailed, match="exceeded 12 s; stopped its workers"):
        train_model.fn(config, str(tmp_path / "run"), timeout_seconds=12)
    assert time.time() - start < 90
    assert committed_steps(tmp_path / "run" / "checkpoints")  # stopped with a checkpoint
    assert not _ray_workers()  # the local cluster went with the call


@pytest.mark.system  # CI's second stage: two Ray Train workers and a restart, about a minute
def test_two_workers_match_two_replicas_and_one_killed_worker_resumes_both(
    prefect_server, data_dir, tmp_path
):
    """workers=2 (two Ray Train workers, MultiWorkerMirroredStrategy over 127.0.0.1, one CPU
    each: the code path of a multi-GPU host, with a CPU per worker) is the same computation as
    one process with two replicas at the same global batch: the final weights agree bit for
    bit. SIGKILL of the non-chief worker after a checkpoint brings the group down; the engine
    restarts both from that checkpoint (each step logged once) and the result is the
    uninterrupted one."""
    import numpy as np
    import tensorflow as tf

    from diffusion_lib.run import Run
    from diffusion_lib.training import TrainConfig, train

    config = _toy_config(data_dir, num_steps=150, checkpoint_every=50, log_every=50)
    train(
        TrainConfig.from_dict(config),
        tmp_path / "replicas",
        strategy=tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]),
    )
    run_dir = tmp_path / "workers"
    state, killed = _train_with_a_kill(
        config,
        run_dir,
        lambda checkpoints, killed: _kill_worker_after(checkpoints, 50, killed, False, 240),
        workers=2,
    )
    result = state.result()
    # The engine started both workers again from the checkpoint the kill found (or one
    # committed in the instant before the signal landed), not from 0.
    assert result["step"] == 150 and killed[0] <= result["started_from"] < 150
    steps = [
        json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    # Only the chief's checkpoints are kept; the other worker's scratch copy is gone.
    assert committed_steps(run_dir / "checkpoints")[-1] == 150
    assert not list(run_dir.glob(".worker-*"))
    assert steps == sorted(set(steps)) and steps[-1] == 150  # resumed, each step once
    one, two = (Run(p).restore() for p in (tmp_path / "replicas", run_dir))
    # Bit for bit (measured: max absolute difference 0.0): a sum of two replicas' gradients
    # is the same sum in either all-reduce.
    for a, b in zip(one.model.weights, two.model.weights, strict=True):
        np.testing.assert_array_equal(b.numpy(), a.numpy(), err_msg=a.name)


@pytest.mark.system  # kept out of the default run's 5-minute budget
def test_divergence_fails_at_once_without_a_restart(prefect_server, data_dir, tmp_path):
    """A diverging run (a learning rate of 1e30) stops at its first non-finite step: the
    workers return with the step named, and the engine does not start them again."""
    config = _toy_config(data_dir, num_steps=200, checkpoint_every=100, learning_rate=1e30)
    starts = []
    with pytest.raises(TrainingFailed, match=r"failed for good \(training diverged.*step \d+"):
        (tmp_path / "c.json").write_text(json.dumps(config))
        launch(
            str(tmp_path / "c.json"),
            str(tmp_path / "run"),
            timeout_seconds=300,
            on_event=lambda worker, event: starts.append(event) if event["event"] == "start" else 0,
        )
    assert len(starts) == 1


@pytest.mark.system  # CI's second stage
def test_a_caller_holding_the_runs_lock_lends_it_to_the_chief(prefect_server, data_dir, tmp_path):
    """A flow holds the run's lock while a Ray worker (another process, given no open file)
    writes the run: the chief writes under the lent lock, and another process asking for the
    lock meanwhile is refused (RunBusy, naming the holder)."""
    run_dir = tmp_path / "run"
    config = _toy_config(data_dir, num_steps=200, checkpoint_every=100, log_every=50)
    probe = (
        "import sys\nfrom diffusion_lib.run_lock import RunBusy, writing\n"
        "try:\n    with writing(sys.argv[1]):\n        print('took it')\n"
        "except RunBusy as err:\n    print('busy:', err)\n"
    )
    seen = []

    def try_meanwhile(worker, event):
        if event["event"] == "progress" and not seen:
            done = subprocess.run(
                [sys.executable, "-c", probe, str(run_dir)], capture_output=True, text=True
            )
            seen.append(done.stdout.strip())

    with writing(run_dir):
        (tmp_path / "c.json").write_text(json.dumps(config))
        done = launch(str(tmp_path / "c.json"), str(run_dir), on_event=try_meanwhile)
    assert done.step == 200
    assert seen and seen[0].startswith("busy:") and f"pid {os.getpid()}" in seen[0]


GPU_CLUSTER = """
import json, sys
import ray
from diffusion_lib import cluster
cluster.local_settings()
ray.init(num_cpus=2, num_gpus=2, object_store_memory=cluster.OBJECT_STORE_BYTES,
         include_dashboard=False, log_to_driver=False)
from diffusion_lib.training.launch import launch
starts = {}
launch(sys.argv[1], sys.argv[2], workers=2, timeout_seconds=600,
       on_event=lambda w, e: starts.update({w: e["gpus"]}) if e["event"] == "start" else 0)
print(json.dumps(starts))
"""


@pytest.mark.system  # two Ray Train workers, about a minute
def test_on_a_cluster_with_gpus_each_worker_gets_one(data_dir, tmp_path):
    """A cluster that offers GPUs (here a local one declaring two: Ray schedules them as it
    would real ones) gets a worker per GPU, each seeing only its own (CUDA_VISIBLE_DEVICES);
    with no GPU behind the names TensorFlow trains on the CPU."""
    config = _toy_config(data_dir, num_steps=20, checkpoint_every=20, log_every=10)
    (tmp_path / "c.json").write_text(json.dumps(config))
    done = subprocess.run(
        [sys.executable, "-c", GPU_CLUSTER, str(tmp_path / "c.json"), str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=600,
        # Ray fills it in for each worker; an empty one (no GPU, as the tests run) would
        # contradict the two GPUs declared.
        env={k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(json.loads(done.stdout.strip().splitlines()[-1]).values()) == ["0", "1"]


@pytest.mark.system  # CI's second stage: three starts of a Ray Train worker, about a minute
def test_a_worker_killed_at_every_start_is_given_up_after_the_engines_restarts(data_dir, tmp_path):
    """A worker SIGKILLed as soon as it starts, every time: the engine starts it again
    `max_failures` times, then the launcher gives up with a failure that says so and that no
    retry of the task would get past (permanent); no worker is left."""
    config = _toy_config(data_dir, num_steps=100_000, checkpoint_every=50, log_every=10)
    (tmp_path / "c.json").write_text(json.dumps(config))
    starts = []

    def kill_each_start(worker, event):
        if event["event"] == "start":
            starts.append(event["pid"])
            os.kill(event["pid"], signal.SIGKILL)

    with pytest.raises(TrainingFailed) as failed:
        launch(
            str(tmp_path / "c.json"),
            str(tmp_path / "run"),
            timeout_seconds=600,
            on_event=kill_each_start,
            max_failures=2,
        )
    assert len(starts) == 3 and len(set(starts)) == 3  # the first start and two restarts
    assert "failed after 2 restart(s) by the engine" in str(failed.value)
    assert failed.value.permanent
    assert not _ray_workers()
