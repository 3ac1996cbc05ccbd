"""`Run`: one run directory as one object: its config, paths, checkpoints, and weights restored
once per step, with errors that name the directory."""

import json

import numpy as np
import pytest

from diffusion_lib.run import Run
from diffusion_lib.training import CheckpointMismatch


@pytest.fixture(scope="module")
def run(toy_ddpm_run):
    return Run(toy_ddpm_run)


def test_what_the_run_trained_and_where_its_parts_live(run):
    assert run.config.objective == "ddpm" and run.example_shape == (2,)
    assert run.objective.family == "diffusion" and run.normalizer.kind == "points"
    assert run.steps() == [100, 200] and run.checkpoint() == 200 and run.checkpoint(100) == 100
    assert run.data_dir("train") == run.path / "data" / "train"
    assert run.metrics_path == run.path / "eval" / "metrics.json"
    assert Run.at(run.path.parent, run.path.name).path == run.path
    assert json.loads(run.config_path.read_text())["config"] == run.config.to_dict()


def test_weights_load_once_per_step_and_differ_between_steps(run):
    latest = run.restore()
    assert run.restore(200) is latest and latest.step == 200
    earlier = run.restore(100)
    weights = [w.numpy() for w in latest.model.trainable_variables]
    assert any(
        not np.array_equal(a, b.numpy())
        for a, b in zip(weights, earlier.model.trainable_variables, strict=True)
    )
    # A fresh Run reads the same EMA weights from disk.
    again = Run(run.path).restore()
    for a, b in zip(weights, again.model.trainable_variables, strict=True):
        np.testing.assert_array_equal(a, b.numpy())


def test_missing_parts_are_named(run, tmp_path):
    with pytest.raises(FileNotFoundError, match="no complete checkpoint for step 150; have"):
        run.restore(150)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        _ = Run(tmp_path).config
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text(run.config_path.read_text())
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        Run(empty).restore()


def test_a_checkpoint_of_another_network_is_refused(run, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    record = json.loads(run.config_path.read_text())
    record["network"]["hidden"] = 7  # not the width the checkpoint holds
    (other / "config.json").write_text(json.dumps(record))
    (other / "checkpoints").symlink_to(run.checkpoints_dir)
    with pytest.raises(CheckpointMismatch, match="does not match this model"):
        Run(other).restore()
