"""`Normalizer`: the map from stored values to model units and back, both directions exact
inverses where they should be, and the score's chain rule checked against a closed form."""

import numpy as np
import pytest
import tensorflow as tf

from diffusion_lib.data import DatasetSpec, open_dataset, prepare_dataset
from diffusion_lib.normalizer import IMAGES, Normalizer


def test_images_round_trip_exactly_and_clip():
    pixels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    model = IMAGES.to_model(pixels)
    assert model.min() == -1.0 and model.max() == 1.0
    np.testing.assert_array_equal(IMAGES.to_data(model), pixels)
    np.testing.assert_array_equal(IMAGES.to_data(np.array([-3.0, 0.0, 3.0])), [0, 128, 255])
    np.testing.assert_array_equal(
        IMAGES.to_model_tf()(tf.constant(pixels)).numpy(), IMAGES.to_model(pixels, np.float32)
    )
    with pytest.raises(ValueError, match="NaN or Inf"):
        IMAGES.to_data(np.array([np.nan]))


def test_points_use_the_manifest_statistics(tmp_path):
    prepare_dataset(DatasetSpec.create("swiss_roll", n=2_000), tmp_path / "roll")
    data = open_dataset(tmp_path / "roll")
    normalizer = Normalizer.of(data.manifest)
    values = data.read().values
    z = normalizer.to_model(values)
    np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-6)
    np.testing.assert_allclose(z.std(0), 1.0, atol=1e-6)
    np.testing.assert_allclose(normalizer.to_data(z), values, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(normalizer.to_model_tf()(tf.constant(values)).numpy(), z, atol=1e-5)


def test_the_score_chain_rule():
    """Data N(m, s^2): standardised it is N(0, 1) with score -z; the data's own score is
    -(x - m) / s^2, which the normalizer must give from the standardised one."""
    m, s = np.array([3.0, -1.0]), np.array([2.0, 0.5])
    normalizer = Normalizer("points", m, s)
    x = np.array([[4.0, 0.0], [1.0, -1.5]])
    z = normalizer.to_model(x)
    np.testing.assert_allclose(normalizer.score_to_data(-z), -(x - m) / s**2)


def test_a_constant_dimension_stays_finite_and_bad_kinds_are_refused():
    normalizer = Normalizer("points", np.array([1.0]), np.maximum(np.array([0.0]), 1e-12))
    assert np.all(np.isfinite(normalizer.to_model(np.array([[1.0]]))))
    with pytest.raises(ValueError, match="kind must be one of"):
        Normalizer("audio")
    with pytest.raises(ValueError, match="mean and std"):
        Normalizer("points")
