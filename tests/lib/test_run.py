"""`Run`: one run directory as one object: its config, paths, checkpoints, and weights restored
once per step, with errors that name the directory."""

import json
import pathlib

import numpy as np
import pytest

from diffusion_lib.run import Run
from diffusion_lib.training import CheckpointMismatch, train


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
    # config.json as written, but for data_dir: recorded relative to the run, read resolved.
    stored = json.loads(run.config_path.read_text())["config"]
    assert stored["data"]["data_dir"] == "data/train"
    assert stored == run.config.replace(data_dir="data/train").to_dict()
    assert run.config.data.data_dir == str(run.path / "data" / "train")


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


def test_weights_restore_under_another_precision_once_each(run):
    """A float32 run restored to compute in bfloat16 (and back): the same float32 weights, one
    load per compute precision; asking for the run's own precision is the same restore."""
    latest = run.restore()
    assert run.restore(precision="float32") is latest
    half = run.restore(precision="mixed_bfloat16")
    assert half is not latest and run.restore(precision="mixed_bfloat16") is half
    assert (
        half.model.inp.compute_dtype == "bfloat16" and latest.model.inp.compute_dtype == "float32"
    )
    for a, b in zip(latest.model.weights, half.model.weights, strict=True):
        assert b.dtype == "float32"
        np.testing.assert_array_equal(a.numpy(), b.numpy())


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


def test_a_run_moved_elsewhere_and_resumed_from_another_directory_finds_its_data(
    toy_ddpm_run, tmp_path, monkeypatch
):
    """config.json records a data directory inside the run relative to it: the run, copied to
    another place and opened from another working directory, reads its own data, samples and
    trains on; a data directory that now holds another dataset is refused, not read."""
    import shutil

    from diffusion_lib.data import DataError, DatasetSpec, prepare_dataset
    from diffusion_lib.samplers import SamplerSpec
    from diffusion_lib.training import config_preset, train

    original = tmp_path / "a" / "run"
    shutil.copytree(toy_ddpm_run / "data", original / "data")
    config = config_preset(
        "toy-ddpm",
        data_dir=str(original / "data" / "train"),
        network="mlp-tiny",
        num_steps=20,
        checkpoint_every=10,
        log_every=10,
    )
    monkeypatch.chdir(tmp_path / "a")
    train(config, "run")
    stored = json.loads((original / "config.json").read_text())["config"]
    assert stored["data"]["data_dir"] == "data/train"
    moved = tmp_path / "b" / "moved"
    shutil.copytree(original, moved)
    shutil.rmtree(original)
    monkeypatch.chdir(tmp_path)
    run = Run("b/moved")
    assert run.dataset.manifest.num_examples == 4_000
    from diffusion_lib.draw import draw

    assert draw(run.restore(), SamplerSpec.of("ddim", num_steps=5), 8, 0).samples.shape == (8, 2)
    train(config.replace(data_dir=str(moved / "data" / "train"), num_steps=30), moved)
    assert Run(moved).steps() == [10, 20, 30]
    # The same place now holding another dataset: refused by fingerprint, never read.
    shutil.rmtree(moved / "data" / "train")
    prepare_dataset(DatasetSpec.create("moons", n=500), moved / "data" / "train")
    with pytest.raises(DataError, match="holds another dataset than"):
        _ = Run(moved).dataset


def test_a_run_directory_of_the_flat_configuration_resumes_evaluates_and_samples(tmp_path):
    """tests/fixtures/run-v1 was written before the configuration had sections (config.json
    flat, version 1) and stopped after its step-10 checkpoint of 20: it is read through the
    migration, resumes to step 20 with its own settings, and is scored and sampled."""
    import shutil

    from diffusion_lib.evaluation import EvalSpec, evaluate_checkpoints
    from diffusion_lib.sample_sets import generate_samples
    from diffusion_lib.samplers import SamplerSpec

    fixture = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "run-v1"
    run_dir = tmp_path / "run-v1"
    shutil.copytree(fixture, run_dir)
    run = Run(run_dir)
    assert "version" not in run.record["config"]
    assert run.config.network.name == "mlp-tiny" and run.config.run.num_steps == 20
    assert run.steps() == [10]
    resumed = train(run.config, run_dir)
    assert resumed.step == 20 and Run(run_dir).steps() == [10, 20]
    # Each step is logged once: the row of step 20 the killed run had written was dropped.
    logged = [
        json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    assert logged == [10, 20]
    report = evaluate_checkpoints(
        run_dir,
        test_dir=run_dir / "data" / "test",
        spec=EvalSpec(n=64, sampler=SamplerSpec.of("ddim", num_steps=5), batch_size=64),
    )
    assert [row["step"] for row in report.rows] == [10, 20] and report.best_step in (10, 20)
    manifest = generate_samples(
        run_dir, tmp_path / "samples", n=32, sampler=SamplerSpec.of("ddim", num_steps=5)
    )
    assert manifest.num_examples == 32
