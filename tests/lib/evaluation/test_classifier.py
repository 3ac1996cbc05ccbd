"""The feature classifier on real digits: its accuracy, its cache, and metrics that rank real
features below lightly and heavily noised ones."""

import json

import numpy as np
import pytest

from diffusion_lib.data import open_dataset
from diffusion_lib.evaluation import (
    fid,
    kid,
    load_or_train_classifier,
)
from diffusion_lib.evaluation.classifier import ClassifierSpec
from diffusion_lib.samplers import SamplerSpec

DDPM = SamplerSpec.of("ddpm")


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
