"""The reader: coverage, determinism, exact resume, per-worker splits, flips, normalisation."""

import numpy as np
import pytest
import tensorflow as tf

from diffusion_lib.data import DataError, DatasetSpec, open_dataset, prepare_dataset

ROLL = DatasetSpec.create("swiss_roll", n=5_000, rows_per_shard=1_000, row_group_size=200)
MNIST = DatasetSpec.create("mnist_embedded", rows_per_shard=1_000, row_group_size=250)


@pytest.fixture(scope="module")
def roll(tmp_path_factory):
    directory = tmp_path_factory.mktemp("roll")
    prepare_dataset(ROLL, directory)
    return open_dataset(directory)


@pytest.fixture(scope="module")
def mnist(tmp_path_factory):
    directory = tmp_path_factory.mktemp("mnist")
    prepare_dataset(MNIST, directory)
    return open_dataset(directory)


def _indices(batches):
    return [b.index.tolist() for b in batches]


def test_one_epoch_visits_every_example_once(roll):
    batches = list(roll.stream(128, seed=1, num_epochs=1, drop_remainder=False, shuffle_window=3))
    seen = np.concatenate([b.index for b in batches])
    assert sorted(seen.tolist()) == list(range(5_000))
    assert seen.tolist() != list(range(5_000))  # shuffled
    sequential = np.concatenate(
        [b.index for b in roll.stream(100, order="sequential", num_epochs=1)]
    )
    assert sequential.tolist() == list(range(5_000))
    values = np.concatenate([b.x for b in roll.stream(100, order="sequential", num_epochs=1)])
    np.testing.assert_array_equal(values, roll.read().values)


def test_order_is_a_function_of_the_seed(roll):
    a = _indices(roll.stream(64, seed=5, num_epochs=2))
    assert a == _indices(roll.stream(64, seed=5, num_epochs=2))
    assert a != _indices(roll.stream(64, seed=6, num_epochs=2))
    # Epochs differ from each other.
    per_epoch = 5_000 // 64
    assert a[:10] != a[per_epoch + 1 : per_epoch + 11]


@pytest.mark.parametrize("start_step", [0, 1, 7, 77, 78, 200])
def test_start_step_resumes_exactly(roll, start_step):
    """Batches from start_step equal the uninterrupted stream's, across epoch boundaries
    (5,000 rows / 64 = 78.1 batches per epoch, so 78 and 200 straddle them)."""
    full = list(roll.stream(64, seed=2, num_epochs=4))
    resumed = list(roll.stream(64, seed=2, num_epochs=4, start_step=start_step))
    assert len(resumed) == len(full) - start_step
    for expected, got in zip(full[start_step:], resumed, strict=True):
        assert got.step == expected.step
        np.testing.assert_array_equal(got.index, expected.index)
        np.testing.assert_array_equal(got.x, expected.x)


def test_rows_sharding_splits_each_global_batch(roll):
    single = list(roll.stream(96, seed=3, num_epochs=1))
    parts = [
        list(roll.stream(96, seed=3, num_epochs=1, num_pipelines=3, pipeline_id=p))
        for p in range(3)
    ]
    for k, batch in enumerate(single):
        union = np.concatenate([parts[p][k].index for p in range(3)])
        np.testing.assert_array_equal(union, batch.index)
        assert len({tuple(parts[p][k].index) for p in range(3)}) == 3


def test_files_sharding_reads_disjoint_shards(roll):
    parts = [
        np.concatenate(
            [
                b.index
                for b in roll.stream(
                    40, seed=3, num_epochs=1, num_pipelines=2, pipeline_id=p, sharding="files"
                )
            ]
        )
        for p in range(2)
    ]
    shard_of = lambda idx: set((idx // 1_000).tolist())  # noqa: E731
    assert shard_of(parts[0]) == {0, 2, 4} and shard_of(parts[1]) == {1, 3}
    assert not set(parts[0].tolist()) & set(parts[1].tolist())
    with pytest.raises(DataError, match="needs at least 8 shards"):
        roll.stream(64, num_pipelines=8, pipeline_id=0, sharding="files")


def test_flip_mirrors_about_half_deterministically(mnist):
    plain = list(mnist.stream(256, seed=4, num_epochs=1))
    flipped = list(mnist.stream(256, seed=4, num_epochs=1, flip=True))
    again = list(mnist.stream(256, seed=4, num_epochs=1, flip=True))
    mirrored = same = 0
    for a, b, c in zip(plain, flipped, again, strict=True):
        np.testing.assert_array_equal(b.x, c.x)
        for x, y in zip(a.x, b.x, strict=True):
            if np.array_equal(x, y):
                same += 1
            else:
                np.testing.assert_array_equal(y, x[:, ::-1])
                mirrored += 1
    # Symmetric digits compare equal either way, so "same" slightly exceeds half.
    assert 0.4 < mirrored / (mirrored + same) < 0.55


def test_tf_dataset_normalises(mnist, roll):
    batch = next(iter(mnist.tf_dataset(64, seed=0, order="sequential")))
    raw = mnist.read(0, 64).values
    np.testing.assert_allclose(
        batch.x.numpy(), raw.astype(np.float32) / 127.5 - 1.0, rtol=0, atol=1e-7
    )
    assert batch.x.dtype == tf.float32 and batch.label.dtype == tf.int64
    points = np.concatenate([b.x.numpy() for b in roll.tf_dataset(500, seed=0, num_epochs=1)])
    np.testing.assert_allclose(points.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(points.std(0), 1.0, atol=1e-5)
    with pytest.raises(DataError, match="flip applies to images only"):
        roll.tf_dataset(64, flip=True)


def test_per_replica_batches_under_mirrored_strategy(roll):
    """Two logical CPUs (conftest): each replica gets its half of global batch k, in order."""
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    distributed = strategy.distribute_datasets_from_function(
        lambda ctx: roll.tf_dataset(64, input_context=ctx, seed=7, normalize=False)
    )
    reference = list(roll.stream(64, seed=7, num_epochs=1))
    for k, batch in zip(range(5), distributed, strict=False):
        halves = [t.numpy() for t in strategy.experimental_local_results(batch.index)]
        assert [len(h) for h in halves] == [32, 32]
        np.testing.assert_array_equal(np.concatenate(halves), reference[k].index)


def test_bad_reader_arguments(roll, tmp_path):
    with pytest.raises(DataError, match="global_batch_size 100 is not divisible by 3 pipelines"):
        roll.stream(100, num_pipelines=3, pipeline_id=0)
    with pytest.raises(DataError, match="order must be one of"):
        roll.stream(10, order="random")
    with pytest.raises(DataError, match="pipeline_id must be in"):
        roll.stream(10, num_pipelines=2, pipeline_id=2)
    with pytest.raises(DataError, match="verify must be one of"):
        open_dataset(roll.directory, verify="maybe")
    with pytest.raises(DataError, match="no manifest.json"):
        open_dataset(tmp_path)


def test_read_rows_equals_indexing_the_whole_read(mnist):
    dataset = mnist
    everything = dataset.read()
    picks = np.sort(np.random.default_rng(0).choice(len(dataset), 300, replace=False))
    rows = dataset.read_rows(picks)
    np.testing.assert_array_equal(rows.values, everything.values[picks])
    np.testing.assert_array_equal(rows.labels, everything.labels[picks])
    assert dataset.read_rows([]).values.shape == (0, 28, 28, 1)
    with pytest.raises(DataError, match="ascending"):
        dataset.read_rows([5, 3])
    with pytest.raises(DataError, match=r"\[0, "):
        dataset.read_rows([len(dataset)])
