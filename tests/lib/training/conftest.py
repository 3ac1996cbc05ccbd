"""Training data for the engine's tests, prepared once per test process: 8 Gaussians (20,000
points, std 0.1) and the embedded MNIST training digits."""

import pytest

from diffusion_lib.data import DatasetSpec, prepare_dataset


@pytest.fixture(scope="session")
def eight(tmp_path_factory):
    directory = tmp_path_factory.mktemp("eight")
    prepare_dataset(DatasetSpec.create("8gaussians", n=20_000, std=0.1), directory)
    return str(directory)


@pytest.fixture(scope="session")
def mnist(tmp_path_factory):
    directory = tmp_path_factory.mktemp("mnist")
    prepare_dataset(
        DatasetSpec.create("mnist_embedded", split="train", rows_per_shard=1500), directory
    )
    return str(directory)
