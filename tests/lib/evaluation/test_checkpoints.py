"""Checkpoint scoring (evaluation/checkpoints.py): 2-D runs against their floors and not
recomputed, an image run with every metric, and the chain health of a score model."""

import json

import numpy as np
import pytest

from diffusion_lib.data import DatasetSpec, prepare_dataset
from diffusion_lib.evaluation import (
    EvalSpec,
    evaluate_checkpoints,
)
from diffusion_lib.evaluation import checkpoints as evaluation_checkpoints
from diffusion_lib.samplers import SamplerSpec
from diffusion_lib.training import config_preset, train

pytestmark = pytest.mark.cost(50)

DDPM = SamplerSpec.of("ddpm")


def test_two_dimensional_run_scored_against_floors_and_not_recomputed(tmp_path, monkeypatch):
    prepare_dataset(DatasetSpec.create("gaussian_mixture", n=10_000), tmp_path / "train")
    prepare_dataset(
        DatasetSpec.create("gaussian_mixture", split="test", n=2_000), tmp_path / "test"
    )
    config = config_preset(
        "toy-ddpm",
        data_dir=str(tmp_path / "train"),
        num_steps=600,
        checkpoint_every=300,
        log_every=300,
    )
    train(config, tmp_path / "run")
    report = evaluate_checkpoints(
        tmp_path / "run", test_dir=tmp_path / "test", spec=EvalSpec(n=1000, sampler=DDPM)
    )
    assert [row["step"] for row in report.rows] == [300, 600]
    floor = report.floors["sliced_wasserstein"]
    last = report.rows[-1]["metrics"]
    first = report.rows[0]["metrics"]
    assert last["sliced_wasserstein"]["floor"] == floor
    # Training helps, and 600 steps get within a few floors (the floor itself is a finite-n
    # estimate: a good model can land below it).
    assert last["sliced_wasserstein"]["value"] < first["sliced_wasserstein"]["value"]
    assert last["sliced_wasserstein"]["value"] < 3 * floor
    # The exact log-likelihood of held-out data (the floor) is the mixture's entropy estimate, about -3.35.
    assert report.floors["log_likelihood"] == pytest.approx(-3.35, abs=0.15)
    # Every 2-D metric has its floor; the best checkpoint is the one both faithful and covering.
    for name in ("precision", "recall", "kde_real_under_samples", "kde_samples_under_real"):
        assert last[name]["floor"] == report.floors[name]
    assert report.floors["balanced_pr"] == 1.0
    assert last["balanced_pr"]["value"] == pytest.approx(
        min(last[k]["value"] / report.floors[k] for k in ("precision", "recall"))
    )
    assert report.best_step == 600 and report.best_metric == "balanced_pr"
    saved = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())
    assert saved["best"] == {"metric": "balanced_pr", "step": 600} and saved["n"] == 1000

    def must_not_sample(*args, **kwargs):
        raise AssertionError("a scored checkpoint was sampled again")

    # Everything scored (a re-run): nothing is sampled, no reference (floors, the classifier's
    # features) is computed again, and the report is left as it was.
    monkeypatch.setattr(evaluation_checkpoints, "draw_set", must_not_sample)
    monkeypatch.setattr(evaluation_checkpoints, "_reference", must_not_sample)
    metrics = tmp_path / "run" / "eval" / "metrics.json"
    written = (metrics.read_bytes(), metrics.stat().st_mtime_ns)
    again = evaluate_checkpoints(
        tmp_path / "run", test_dir=tmp_path / "test", spec=EvalSpec(n=1000, sampler=DDPM)
    )
    assert again.rows == report.rows and again.floors == report.floors
    assert (again.best_step, again.best_metric) == (600, "balanced_pr")
    assert (metrics.read_bytes(), metrics.stat().st_mtime_ns) == written
    monkeypatch.undo()
    # A report written before balanced_pr existed (rows of sliced Wasserstein and MMD alone):
    # its rows cannot name the best checkpoint, so they are scored again.
    older = json.loads(written[0])
    for row in older["rows"]:
        row["metrics"] = {k: row["metrics"][k] for k in ("sliced_wasserstein", "mmd")}
    older["floors"] = {k: older["floors"][k] for k in ("sliced_wasserstein", "mmd")}
    older["best"] = {"metric": "sliced_wasserstein", "step": 600}
    metrics.write_text(json.dumps(older))
    rescored = evaluate_checkpoints(
        tmp_path / "run", test_dir=tmp_path / "test", spec=EvalSpec(n=1000, sampler=DDPM)
    )
    assert rescored.rows == report.rows and rescored.best_metric == "balanced_pr"
    newest = evaluate_checkpoints(
        tmp_path / "run",
        test_dir=tmp_path / "test",
        spec=EvalSpec(n=1000, sampler=DDPM, newest=1),
    )
    assert [row["step"] for row in newest.rows] == [600] and newest.best_step == 600
    with pytest.raises(ValueError, match="newest"):
        EvalSpec(newest=-1)
    with pytest.raises(ValueError, match="ode_bpd_examples"):
        EvalSpec(ode_bpd_examples=1.5)
    # Off, the ODE likelihood leaves the settings' fingerprint what it was before it existed, so
    # finished evaluations are not scored again.
    assert "ode_bpd_examples" not in EvalSpec().to_dict()
    assert EvalSpec(ode_bpd_examples=8).to_dict()["ode_bpd_examples"] == 8


def test_image_run_gets_every_metric(mnist_tiny_run, mnist, extractor):
    # The shared two-step image run (an untrained model); the classifier cached by `extractor`
    # (keyed by the training set's fingerprint: the same digits) is reused, not retrained.
    run, test = mnist_tiny_run, mnist_tiny_run / "data" / "test"
    spec = EvalSpec(
        n=200,
        sampler=SamplerSpec.of("ddim", num_steps=5),
        bpd_examples=4,
        classifier_epochs=3,
        ode_bpd_examples=2,
    )
    report = evaluate_checkpoints(run, test_dir=test, cache_dir=mnist / "cache", spec=spec)
    metrics = report.rows[0]["metrics"]
    assert {
        "fid",
        "kid",
        "precision",
        "recall",
        "classifier_score",
        "classes_covered",
        "smallest_class_share",
        "bits_per_dim",
        "ode_bits_per_dim",
    } <= set(metrics)
    # An untrained model is far from real digits; the real-vs-real floor is far lower.
    assert metrics["fid"]["value"] > 5 * report.floors["fid"]
    assert report.floors["classifier_test_accuracy"] >= 0.93
    assert 1.0 <= metrics["classifier_score"]["value"] <= 10.0
    assert 0.0 <= metrics["smallest_class_share"]["value"] <= 0.1
    assert 0.05 < metrics["smallest_class_share"]["floor"] <= 0.1  # real digits: every class
    assert np.isfinite(metrics["bits_per_dim"]["value"]) and metrics["bits_per_dim"]["value"] > 0
    # The same network's likelihood by the probability-flow ODE of the VP SDE it discretises.
    assert 0 < metrics["ode_bits_per_dim"]["value"] < 100
    assert len(list((mnist / "cache").glob("reference-*.npz"))) == 1
    again = evaluate_checkpoints(run, test_dir=test, cache_dir=mnist / "cache", spec=spec)
    assert again.floors == report.floors and again.rows == report.rows
    with pytest.raises(ValueError, match="n=1000 needs 1000 examples"):
        evaluate_checkpoints(run, test_dir=test, spec=EvalSpec(n=1000))


def test_score_run_records_the_chain_health_that_exposes_a_lagging_sampler(tmp_path):
    """Each scored checkpoint of a score model carries the chain's RMS per noise level beside
    the RMS it should carry; the same checkpoint sampled with a 100x too small step_lr (a chain
    that cannot keep up with its schedule) shows it in the worst ratio."""
    prepare_dataset(DatasetSpec.create("swiss_roll", n=4_000), tmp_path / "train")
    prepare_dataset(DatasetSpec.create("swiss_roll", split="test", n=1_000), tmp_path / "test")
    config = config_preset(
        "toy-ncsn", data_dir=str(tmp_path / "train"), num_steps=400, checkpoint_every=400
    )
    train(config, tmp_path / "run")
    ratios = {}
    for step_lr in (4.8e-4, 4.8e-6):
        sampler = SamplerSpec.of("annealed_langevin", steps_per_level=10, step_lr=step_lr)
        spec = EvalSpec(n=500, sampler=sampler)
        row = evaluate_checkpoints(tmp_path / "run", test_dir=tmp_path / "test", spec=spec).rows[0]
        assert [level["sigma"] for level in row["chain"]] == pytest.approx(
            np.geomspace(5.0, 0.05, 10)
        )
        ratios[step_lr] = row["metrics"]["chain_worst_rms_ratio"]["value"]
    assert ratios[4.8e-4] < 1.5 and ratios[4.8e-6] > 3.0, ratios


def test_progress_follows_the_sampling_through_each_chain(toy_ddpm_run):
    """2 checkpoints x 2 chunks x a 10-step chain: the share drawn is reported from within each
    chain, never goes back, and ends at 1."""
    seen = []
    spec = EvalSpec(n=200, sampler=SamplerSpec.of("ddim", num_steps=10), batch_size=100, seed=7)
    evaluate_checkpoints(
        toy_ddpm_run, test_dir=toy_ddpm_run / "data" / "test", spec=spec, progress=seen.append
    )
    assert len(seen) >= 2 * 2 * 10 and seen == sorted(seen)
    assert 0 < seen[0] < 0.05 and seen[-1] == 1.0
    assert 0.5 in seen  # the first checkpoint's end
