"""One writer per run directory, with real processes and real signals: a second process is
refused naming the first, a lock left by a SIGKILLed holder is taken over, a process lent the
lock writes under its lender's (and takes it when free), and a training worker and a Trainer
in another process cannot write one run at once."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from diffusion_lib import run_lock
from diffusion_lib.run_lock import RunBusy, acquire, lent, writing


@pytest.fixture(scope="module")
def eight_points(tmp_path_factory):
    from diffusion_lib.data import DatasetSpec, prepare_dataset

    directory = tmp_path_factory.mktemp("eight")
    prepare_dataset(DatasetSpec.create("8gaussians", n=2_000, std=0.1), directory)
    return str(directory)


HOLD = """
import sys, time
from diffusion_lib.run_lock import acquire
acquire(sys.argv[1])
print("held", flush=True)
time.sleep(600)
"""


def _holder(run_dir, **popen):
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True, **popen
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_process_is_refused_naming_the_first_and_a_killed_holders_lock_is_free(
    tmp_path,
):
    run_dir = tmp_path / "run"
    first = _holder(run_dir)
    try:
        with pytest.raises(RunBusy, match=rf"run {run_dir} is being written by pid {first.pid} "):
            acquire(run_dir)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    with writing(run_dir):  # the kernel dropped the dead holder's lock: taken over at once
        stamp = json.loads((run_dir / run_lock.LOCK_NAME).read_text())
        assert stamp["pid"] == os.getpid()
        with writing(run_dir):  # re-entrant within a process
            pass
        second = subprocess.run(
            [sys.executable, "-c", HOLD, str(run_dir)], capture_output=True, text=True, timeout=60
        )
        assert second.returncode != 0 and f"pid {os.getpid()}" in second.stderr
    _holder(run_dir).kill()  # released: another process may take it


def test_a_process_lent_the_lock_writes_under_it_and_takes_it_when_it_is_free(tmp_path):
    """A Ray worker inherits no open file: the holder lends it the lock by name. While the
    lender holds it, the lent process writes under it and any other process is refused; once
    it is free, the lent process takes it itself."""
    run_dir = tmp_path / "run"
    with writing(run_dir):
        env = {**os.environ, **lent(run_dir)}
        borrower = _holder(run_dir, env=env)
        try:
            stranger = subprocess.run(
                [sys.executable, "-c", HOLD, str(run_dir)], capture_output=True, text=True
            )
            assert stranger.returncode != 0 and f"pid {os.getpid()}" in stranger.stderr
        finally:
            borrower.kill()
            borrower.wait()
    borrower = _holder(run_dir, env=env)  # free: the lent process locks it itself
    try:
        with pytest.raises(RunBusy, match=f"pid {borrower.pid}"):
            acquire(run_dir)
    finally:
        borrower.kill()
        borrower.wait()
    assert lent(tmp_path / "other") == {}


def test_a_training_worker_and_a_trainer_elsewhere_cannot_write_one_run(eight_points, tmp_path):
    from diffusion_lib.training import Trainer, config_preset

    config = config_preset(
        "toy-ddpm", data_dir=eight_points, network="mlp-tiny", num_steps=10**6, log_every=10
    )
    (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))
    command = [sys.executable, "-m", "diffusion_lib.training", "--config"]
    worker = subprocess.Popen(
        [*command, str(tmp_path / "config.json"), "--run-dir", str(tmp_path / "run")],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        for line in worker.stdout:  # its first progress line: it is training
            if line.startswith('{"event": "progress"'):
                break
        with pytest.raises(RunBusy, match=f"pid {worker.pid}"):
            Trainer(config, tmp_path / "run")
    finally:
        worker.kill()
        worker.wait()
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            with writing(tmp_path / "run"):
                break
        except RunBusy:
            time.sleep(0.2)
    else:
        pytest.fail("the killed worker's lock was not released")
