"""The embedded MNIST subset (train and test splits) and the feature classifier trained on it, once
per test process."""

import pytest

from diffusion_lib.data import DatasetSpec, prepare_dataset
from diffusion_lib.evaluation import (
    load_or_train_classifier,
)
from diffusion_lib.evaluation.classifier import ClassifierSpec
from diffusion_lib.samplers import SamplerSpec

DDPM = SamplerSpec.of("ddpm")


@pytest.fixture(scope="session")
def mnist(tmp_path_factory):
    root = tmp_path_factory.mktemp("mnist")
    prepare_dataset(DatasetSpec.create("mnist_embedded", split="train"), root / "train")
    prepare_dataset(DatasetSpec.create("mnist_embedded", split="test"), root / "test")
    return root


@pytest.fixture(scope="session")
def extractor(mnist):
    return load_or_train_classifier(
        mnist / "train", mnist / "test", mnist / "cache", ClassifierSpec(epochs=3)
    )
