"""Training as real worker processes: exact resume after a clean stop and after SIGKILL. (Two
MultiWorkerMirroredStrategy workers on localhost: tests/tasks/test_train.py.)"""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from diffusion_lib.data import DatasetSpec, prepare_dataset
from diffusion_lib.training import committed_steps, config_preset

pytestmark = pytest.mark.cost(75)

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    prepare_dataset(DatasetSpec.create("moons", n=4_000), root / "moons")
    config = config_preset(
        "toy-ddpm",
        data_dir=str(root / "moons"),
        network="mlp-tiny",
        batch_size=64,
        num_steps=600,
        checkpoint_every=50,
        log_every=10,
        keep_last=20,
    )
    path = root / "config.json"
    path.write_text(json.dumps(config.to_dict()))
    return path


def _worker(config_file, run_dir, *extra, env=None):
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "diffusion_lib.training",
            "--config",
            str(config_file),
            "--run-dir",
            str(run_dir),
            "--deterministic",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env or ENV,
        start_new_session=True,
    )


def _finish(proc, timeout=300):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out[-2000:]}\n{err[-3000:]}"
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def _weights(run_dir, step):
    reader = tf.train.load_checkpoint(str(run_dir / "checkpoints" / f"ckpt-{step}"))
    names = [n for n, _ in tf.train.list_variables(str(run_dir / "checkpoints" / f"ckpt-{step}"))]
    return {n: reader.get_tensor(n) for n in names if "save_counter" not in n}


@pytest.fixture(scope="module")
def reference(config_file, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    events = _finish(_worker(config_file, run_dir))
    assert events[-1]["event"] == "done" and events[-1]["step"] == 600
    return _weights(run_dir, 600)


def _logged_steps(run_dir, tag="loss"):
    """The steps of `tag`'s TensorBoard events in `run_dir`, over all its event files, sorted."""
    steps = []
    for path in sorted((run_dir / "tensorboard").iterdir()):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            steps += [event.step for value in event.summary.value if value.tag == tag]
    return sorted(steps)


def _assert_bitwise_equal(a, b):
    assert a.keys() == b.keys() and len(a) > 10
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_clean_stop_then_resume_is_bitwise_identical(config_file, reference, tmp_path):
    events = _finish(_worker(config_file, tmp_path / "run", "--max-steps", "230"))
    assert events[-1]["step"] == 230 and events[-1]["stopped_early"]
    assert committed_steps(tmp_path / "run" / "checkpoints")[-1] == 230
    events = _finish(_worker(config_file, tmp_path / "run"))
    assert events[0] == {
        "event": "start",
        "step": 230,
        "total": 600,
        "replicas": 1,
        "precision": "float32",
    }
    assert events[1]["event"] == "progress" and events[1]["step"] == 240
    # Both processes' TensorBoard events are on disk to their last step, though a worker ends
    # without the interpreter's teardown.
    assert _logged_steps(tmp_path / "run") == list(range(10, 601, 10))
    _assert_bitwise_equal(_weights(tmp_path / "run", 600), reference)


def test_sigterm_saves_and_stops(config_file, tmp_path):
    proc = _worker(config_file, tmp_path / "run")
    for line in proc.stdout:
        if '"step": 100' in line:
            proc.send_signal(signal.SIGTERM)
            break
    events = _finish(proc)
    assert events[-1]["event"] == "done" and events[-1]["stopped_early"]
    stopped_at = events[-1]["step"]
    assert (
        100 <= stopped_at < 600
        and committed_steps(tmp_path / "run" / "checkpoints")[-1] == stopped_at
    )


def test_sigkill_then_resume_is_bitwise_identical(config_file, reference, tmp_path):
    proc = _worker(config_file, tmp_path / "run")
    for line in proc.stdout:
        if '"step": 170' in line:
            os.killpg(proc.pid, signal.SIGKILL)
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    steps = committed_steps(tmp_path / "run" / "checkpoints")
    assert steps and steps[-1] < 600
    events = _finish(_worker(config_file, tmp_path / "run"))
    assert events[0]["event"] == "start" and events[0]["step"] == steps[-1]
    assert events[1]["step"] == steps[-1] + 10
    _assert_bitwise_equal(_weights(tmp_path / "run", 600), reference)


def test_a_worker_starts_without_scikit_learn_pyplot_or_pandas(tmp_path):
    """Keras imports scikit-learn (1.9 s here), matplotlib's pyplot and pandas (0.9 s) for
    parts a worker never uses: the worker keeps them out, and still reads its config and
    reports bad input (exit 2) after TensorFlow and Keras are imported."""
    bad = tmp_path / "config.json"
    bad.write_text(json.dumps({"num_steps": -1}))
    proc = _worker(bad, tmp_path / "run", env={**ENV, "PYTHONPROFILEIMPORTTIME": "1"})
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err[-2000:]
    assert "num_steps" in out
    imported = {line.rsplit("|", 1)[-1].strip() for line in err.splitlines() if "|" in line}
    assert {"tensorflow", "keras.src.wrappers.sklearn_wrapper"} <= imported
    assert {
        "keras.src.visualization.plot_image_gallery",
        "keras.src.trainers.data_adapters.array_slicing",
    } <= imported
    # Their names are listed as attempts; their own modules, which a real import loads, are not.
    assert imported.isdisjoint({"sklearn.base", "matplotlib.figure", "pandas.core.frame"})
