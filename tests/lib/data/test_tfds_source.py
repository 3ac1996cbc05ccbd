"""The TFDS source, for real and offline: a tiny builder prepared in a temporary data_dir."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from diffusion_lib.data import DataError, DatasetSpec, open_dataset, open_source, prepare_dataset


class TinyDigitsForTest(tfds.core.GeneratorBasedBuilder):
    """12 train / 4 test 8x8 grayscale images whose pixels encode their key."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(8, 8, 1)),
                    "label": tfds.features.ClassLabel(num_classes=3),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(12, 0), "test": self._generate_examples(4, 100)}

    def _generate_examples(self, n, offset):
        for i in range(n):
            yield i, {"image": np.full((8, 8, 1), offset + i, np.uint8), "label": i % 3}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tfds")
    TinyDigitsForTest(data_dir=str(path)).download_and_prepare()
    return str(path)


def test_reads_ranges_in_file_order(data_dir):
    source = open_source("tfds", "train", {"name": "tiny_digits_for_test", "data_dir": data_dir})
    assert len(source) == 12 and source.example_shape == (8, 8, 1) and source.has_labels
    whole = source.read(0, 12)
    # TFDS stores examples in its own (hashed-key) order: every index appears once, and a range
    # read is the same slice of that order.
    assert sorted(whole.values[:, 0, 0, 0].tolist()) == list(range(12))
    np.testing.assert_array_equal(whole.labels, whole.values[:, 0, 0, 0] % 3)
    got = source.read(3, 9)
    np.testing.assert_array_equal(got.values, whole.values[3:9])
    np.testing.assert_array_equal(got.labels, whole.labels[3:9])


def test_prepares_into_shards(data_dir, tmp_path):
    spec = DatasetSpec.create("tfds", split="test", name="tiny_digits_for_test", data_dir=data_dir)
    manifest = prepare_dataset(spec, tmp_path / "tiny")
    assert manifest.num_examples == 4
    examples = open_dataset(tmp_path / "tiny").read()
    direct = open_source(
        "tfds", "test", {"name": "tiny_digits_for_test", "data_dir": data_dir}
    ).read(0, 4)
    np.testing.assert_array_equal(examples.values, direct.values)
    assert sorted(examples.values[:, 0, 0, 0].tolist()) == [100, 101, 102, 103]


def test_missing_dataset_is_not_downloaded(tmp_path):
    with pytest.raises(DataError, match="not prepared in data_dir=.*pass download=True"):
        open_source("tfds", "train", {"name": "tiny_digits_for_test", "data_dir": str(tmp_path)})
    with pytest.raises(DataError, match="has splits"):
        TinyDigitsForTest(data_dir=str(tmp_path)).download_and_prepare()
        open_source(
            "tfds", "validation", {"name": "tiny_digits_for_test", "data_dir": str(tmp_path)}
        )
