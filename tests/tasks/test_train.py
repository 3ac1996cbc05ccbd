"""train_model as a Prefect task: a SIGKILLed worker is retried and resumes from its checkpoint;
a bad config fails with the worker's message; a timeout kills the process group."""

import json
import os
import signal
import threading
import time

import psutil
import pytest
from prefect import flow

from diffusion_lib.data import DatasetSpec, prepare_dataset
from diffusion_lib.training import committed_steps
from diffusion_lib.training.launch import TrainingFailed, worker_environments
from tasks.presets import TrainPart
from tasks.train import _Reporter, train_model

pytestmark = pytest.mark.cost(110)


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


def _kill_worker_after(checkpoints, step, killed, index=None, timeout=180):
    """Waits for a committed checkpoint >= step, then SIGKILLs the process group of a training
    worker: any one, or the one whose TF_CONFIG task index is `index` (the others are left
    running)."""
    deadline = time.time() + timeout
    while time.time() < deadline and not killed:
        done = committed_steps(checkpoints)
        if done and done[-1] >= step:
            for child in psutil.Process().children(recursive=True):
                try:
                    if "diffusion_lib.training" not in " ".join(child.cmdline()):
                        continue
                    task = json.loads(child.environ().get("TF_CONFIG", "{}")).get("task", {})
                except (psutil.Error, ValueError):
                    continue
                if index is None or task.get("index") == index:
                    os.killpg(child.pid, signal.SIGKILL)
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


def test_sigkilled_worker_is_retried_and_resumes(prefect_server, data_dir, tmp_path):
    config = _toy_config(data_dir, num_steps=600, checkpoint_every=100, log_every=100)
    run_dir = tmp_path / "run"
    state, _ = _train_with_a_kill(
        config, run_dir, lambda checkpoints, killed: _kill_worker_after(checkpoints, 300, killed)
    )
    result = state.result()
    assert result["step"] == 600 and result["checkpoint"].endswith("ckpt-600")
    rows = (run_dir / "metrics.jsonl").read_text().splitlines()
    steps = [int(line.split('"step": ')[1].split(",")[0]) for line in rows]
    # The retry resumed after the last checkpoint before the kill, not from step 0.
    assert steps.count(100) == 1 and steps[-1] == 600


def test_bad_config_fails_with_the_workers_message(prefect_server, data_dir, tmp_path):
    config = _toy_config(str(tmp_path / "missing"), num_steps=10)
    with pytest.raises(TrainingFailed, match=r"exited with 2 \(bad input .*\).*no manifest.json"):
        train_model.fn(config, str(tmp_path / "run"), timeout_seconds=120)
    with pytest.raises(Exception, match="num_steps"):
        TrainPart.of("toy-ddpm", num_steps=-1)


def test_a_batch_larger_than_the_data_is_bad_input_and_a_fixed_rerun_is_accepted(
    prefect_server, data_dir, tmp_path
):
    """Exit 2 (not retried) naming batch_size, before the run directory holds a config; the same
    run with a batch that fits then trains."""
    run_dir = tmp_path / "run"
    config = _toy_config(data_dir, num_steps=4, checkpoint_every=4, log_every=2)
    with pytest.raises(
        TrainingFailed, match=r"exited with 2 .*batch_size: 100000 is larger than the 4000"
    ):
        too_large = _toy_config(data_dir, num_steps=4, checkpoint_every=4, batch_size=100_000)
        train_model.fn(too_large, str(run_dir), timeout_seconds=120)
    assert not (run_dir / "config.json").exists()
    assert train_model.fn(config, str(run_dir), timeout_seconds=120)["step"] == 4


def test_a_failure_without_an_error_event_is_explained_by_the_workers_last_lines():
    """A worker that dies before it can report (an import error, a fatal TensorFlow check, a
    signal) is explained by its own output: the last line naming an error, never one of
    TensorFlow's start-up notices; a signal is named."""
    from diffusion_lib.training.launch import exit_meaning, failure_reason
    from tests.lib.training.test_startup_noise import CUINIT, NOISE

    tail = [
        "Traceback (most recent call last):",
        '  File "x.py", line 1, in <module>',
        "ModuleNotFoundError: No module named 'pyarrow'",
        "",
    ]
    assert failure_reason(None, tail) == "ModuleNotFoundError: No module named 'pyarrow'"
    assert failure_reason({"kind": "DataError", "message": "bad shard"}, tail) == (
        "DataError: bad shard"
    )
    # A worker SIGKILLed after its start-up printed TensorFlow's notices: the cuInit line names
    # an error but is not the reason (it used to be given as one).
    started = [*NOISE, CUINIT, ""]
    assert failure_reason(None, started) == "no output beyond TensorFlow's start-up notices"
    assert failure_reason(None, [*NOISE, "step 10 of 20", CUINIT]) == "step 10 of 20"
    assert failure_reason(None, []) == "no output"
    assert exit_meaning(-9) == "killed by SIGKILL" and exit_meaning(-6) == "killed by SIGABRT"
    assert exit_meaning(2).startswith("bad input") and exit_meaning(1) == "failed"


def test_timeout_kills_the_process_group(prefect_server, data_dir, tmp_path):
    config = _toy_config(data_dir, num_steps=10**6, checkpoint_every=10**6, log_every=10)
    start = time.time()
    with pytest.raises(TrainingFailed, match="exceeded 8 s; killed its process group"):
        train_model.fn(config, str(tmp_path / "run"), timeout_seconds=8)
    assert time.time() - start < 60
    assert not [
        c
        for c in psutil.Process().children(recursive=True)
        if "diffusion_lib.training" in " ".join(c.cmdline())
    ]


def test_worker_environments_split_the_gpus_evenly():
    envs = worker_environments(2, "0,1,2,3")
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0,1", "2,3"]
    assert [json.loads(e["TF_CONFIG"])["task"]["index"] for e in envs] == [0, 1]
    with pytest.raises(ValueError, match="workers"):
        worker_environments(2, "0,1,2")


def test_two_workers_match_two_replicas_and_one_killed_worker_resumes_both(
    prefect_server, data_dir, tmp_path
):
    """workers=2 (two processes, MultiWorkerMirroredStrategy over localhost, one CPU each: the
    code path of a multi-GPU host, with a CPU per worker) is the same computation as one process with two replicas at the same global batch: the final
    weights agree bit for bit. SIGKILL of the non-chief worker after a checkpoint brings
    the other down with it; the task's retry restarts both from that checkpoint (each step
    logged once) and the result is the uninterrupted one."""
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
        lambda checkpoints, killed: _kill_worker_after(checkpoints, 50, killed, 1, 240),
        workers=2,
    )
    result = state.result()
    # The retry started both workers from the checkpoint the kill found (or one committed
    # in the instant before the signal landed), not from 0.
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
