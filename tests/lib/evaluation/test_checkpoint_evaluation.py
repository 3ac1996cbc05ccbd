"""The feature classifier on real digits, metric ranking on real features, checkpoint scoring."""

import json

import numpy as np
import pytest

from diffusion_lib.data import DatasetSpec, open_dataset, prepare_dataset
from diffusion_lib.evaluation import (
    EvalSpec,
    evaluate_checkpoints,
    fid,
    kid,
    load_or_train_classifier,
)
from diffusion_lib.evaluation import checkpoints as evaluation_checkpoints
from diffusion_lib.evaluation.classifier import ClassifierSpec
from diffusion_lib.samplers import SamplerSpec
from diffusion_lib.training import config_preset, train

DDPM = SamplerSpec.of("ddpm")


@pytest.fixture(scope="module")
def mnist(tmp_path_factory):
    root = tmp_path_factory.mktemp("mnist")
    prepare_dataset(DatasetSpec.create("mnist_embedded", split="train"), root / "train")
    prepare_dataset(DatasetSpec.create("mnist_embedded", split="test"), root / "test")
    return root


@pytest.fixture(scope="module")
def extractor(mnist):
    return load_or_train_classifier(
        mnist / "train", mnist / "test", mnist / "cache", ClassifierSpec(epochs=3)
    )


def test_classifier_accuracy_on_the_embedded_subset_and_cache(extractor, mnist):
    # 4,500 training digits, 3 epochs: measured 95.8% on the 500 held-out digits; the bound
    # leaves room for run-to-run variation. (Full MNIST's 98% needs the 60,000-digit set.)
    assert extractor.test_accuracy >= 0.93
    again = load_or_train_classifier(
        mnist / "train", mnist / "test", mnist / "cache", ClassifierSpec(epochs=3)
    )
    assert again.path == extractor.path and again.test_accuracy == extractor.test_accuracy
    record = json.loads(extractor.path.with_suffix(".json").read_text())
    assert record["train_fingerprint"] == open_dataset(mnist / "train").manifest.fingerprint
    with pytest.raises(ValueError, match="the classifier expects"):
        extractor.features(np.zeros((2, 32, 32, 3), np.uint8))


def test_metrics_rank_real_below_lightly_below_heavily_noised(extractor, mnist):
    test = open_dataset(mnist / "test").read().values
    # A random subset: the embedded digits are stored sorted by class.
    rng = np.random.default_rng(0)
    train = open_dataset(mnist / "train").read().values[rng.permutation(4500)[:500]]

    def noised(images, sigma):
        return np.clip(images + rng.normal(0, sigma, images.shape), 0, 255).astype(np.uint8)

    reference = extractor.features(test)
    scores = [
        fid(reference, extractor.features(x)) for x in (train, noised(train, 30), noised(train, 90))
    ]
    assert scores[0] < scores[1] < scores[2], scores
    kids = [
        kid(reference, extractor.features(x), subset_size=400).mean
        for x in (train, noised(train, 90))
    ]
    assert kids[0] < kids[1]


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
    assert report.best_step == 600 and report.best_metric == "sliced_wasserstein"
    saved = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())
    assert saved["best"] == {"metric": "sliced_wasserstein", "step": 600} and saved["n"] == 1000

    def must_not_sample(*args, **kwargs):
        raise AssertionError("a scored checkpoint was sampled again")

    monkeypatch.setattr(evaluation_checkpoints, "draw_set", must_not_sample)
    again = evaluate_checkpoints(
        tmp_path / "run", test_dir=tmp_path / "test", spec=EvalSpec(n=1000, sampler=DDPM)
    )
    assert again.rows == report.rows
    monkeypatch.undo()
    newest = evaluate_checkpoints(
        tmp_path / "run",
        test_dir=tmp_path / "test",
        spec=EvalSpec(n=1000, sampler=DDPM, newest=1),
    )
    assert [row["step"] for row in newest.rows] == [600] and newest.best_step == 600
    with pytest.raises(ValueError, match="newest"):
        EvalSpec(newest=-1)


def test_image_run_gets_every_metric(mnist, tmp_path):
    config = config_preset(
        "mnist-ddpm-tiny",
        data_dir=str(mnist / "train"),
        num_timesteps=20,
        batch_size=16,
        num_steps=4,
        checkpoint_every=4,
        log_every=4,
    )
    train(config, tmp_path / "run")
    spec = EvalSpec(
        n=200, sampler=SamplerSpec.of("ddim", num_steps=5), bpd_examples=4, classifier_epochs=3
    )
    report = evaluate_checkpoints(
        tmp_path / "run", test_dir=mnist / "test", cache_dir=mnist / "cache", spec=spec
    )
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
    } <= set(metrics)
    # An untrained model is far from real digits; the real-vs-real floor is far lower.
    assert metrics["fid"]["value"] > 5 * report.floors["fid"]
    assert report.floors["classifier_test_accuracy"] >= 0.93
    assert 1.0 <= metrics["classifier_score"]["value"] <= 10.0
    assert 0.0 <= metrics["smallest_class_share"]["value"] <= 0.1
    assert 0.05 < metrics["smallest_class_share"]["floor"] <= 0.1  # real digits: every class
    assert np.isfinite(metrics["bits_per_dim"]["value"]) and metrics["bits_per_dim"]["value"] > 0
    assert len(list((mnist / "cache").glob("reference-*.npz"))) == 1
    again = evaluate_checkpoints(
        tmp_path / "run", test_dir=mnist / "test", cache_dir=mnist / "cache", spec=spec
    )
    assert again.floors == report.floors and again.rows == report.rows
    with pytest.raises(ValueError, match="n=1000 needs 1000 examples"):
        evaluate_checkpoints(tmp_path / "run", test_dir=mnist / "test", spec=EvalSpec(n=1000))


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
