"""Networks: shapes at 28/32 and odd sizes, zero-initialised outputs, conditioning, dropout
determinism, serialisation, presets and config validation."""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from diffusion_lib.networks import NetworkConfig, build_network, layers, preset, preset_names


@pytest.mark.parametrize(
    ("shape", "mults"),
    [
        ((28, 28, 1), (1, 2, 2)),
        ((32, 32, 3), (1, 2, 2)),
        ((28, 28, 1), (1, 1, 2, 2)),
        ((7, 7, 1), (1, 2, 2)),
    ],
)
def test_unet_shapes_including_odd_sizes(shape, mults):
    """28 -> 14 -> 7 -> 4 and 7 -> 4 -> 2 both need the crop on the way up."""
    cfg = preset("unet-tiny", data_shape=shape, channel_mults=mults, attn_resolutions=(7,))
    model = build_network(cfg)
    out = model(tf.random.normal([3, *shape]), tf.constant([0, 10, 999]))
    assert out.shape == (3, *shape) and out.dtype == tf.float32
    np.testing.assert_array_equal(out.numpy(), 0.0)  # zero-initialised output layer


def test_learned_variance_doubles_the_channels():
    model = build_network(preset("unet-tiny", output_channels_factor=2))
    assert model(tf.zeros([2, 28, 28, 1]), tf.constant([1, 2])).shape == (2, 28, 28, 2)


def _perturb_output_layer(model, seed=0):
    """Zero-initialised kernels (the output layer, each residual branch's last convolution,
    attention projections) hide the conditioning and dropout: randomise them for the test."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        if "kernel" in weight.path and not np.any(weight.numpy()):
            weight.assign(rng.normal(0, 0.1, weight.shape).astype(np.float32))


def test_conditioning_changes_the_output_and_examples_are_independent():
    model = build_network(preset("unet-tiny"))
    _perturb_output_layer(model)
    x = tf.random.stateless_normal([2, 28, 28, 1], [1, 2])
    a = model(x, tf.constant([3, 3])).numpy()
    b = model(x, tf.constant([3, 700])).numpy()
    np.testing.assert_allclose(a[0], b[0], atol=1e-6)  # example 0 unchanged
    assert np.abs(a[1] - b[1]).max() > 1e-4  # example 1 sees its new timestep
    alone = model(x[:1], tf.constant([3])).numpy()
    np.testing.assert_allclose(alone[0], a[0], atol=1e-5)


def test_ncsnv2_output_scaling_divides_by_sigma():
    cfg = preset("mlp-tiny", conditioning="log_sigma", output_scaling="inverse_sigma")
    model = build_network(cfg)
    _perturb_output_layer(model)
    plain = build_network(dataclasses.replace(cfg, output_scaling="none"))
    plain.set_weights(model.get_weights())
    x, sigma = tf.random.normal([4, 2]), tf.constant([0.01, 0.1, 1.0, 10.0])
    np.testing.assert_allclose(
        model(x, sigma).numpy(), plain(x, sigma).numpy() / sigma.numpy()[:, None], rtol=1e-5
    )


def test_dropout_is_a_pure_function_of_the_seed():
    model = build_network(preset("unet-tiny", dropout=0.5))
    _perturb_output_layer(model)
    x, t = tf.random.normal([2, 28, 28, 1]), tf.constant([5, 6])
    a = model(x, t, training=True, seed=tf.constant([1, 2])).numpy()
    b = model(x, t, training=True, seed=tf.constant([1, 2])).numpy()
    c = model(x, t, training=True, seed=tf.constant([1, 3])).numpy()
    d = model(x, t).numpy()
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 0 and np.abs(a - d).max() > 0
    with pytest.raises(ValueError, match="needs a seed"):
        model(x, t, training=True)


@pytest.mark.parametrize("name", ["mlp-tiny", "unet-tiny"])
def test_serialisation_round_trip(name, tmp_path):
    model = build_network(preset(name))
    _perturb_output_layer(model)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    shape = model.config["data_shape"]
    x, t = tf.random.normal([2, *shape]), tf.constant([1, 2])
    np.testing.assert_array_equal(loaded(x, t).numpy(), model(x, t).numpy())
    clone = model.__class__.from_config(model.get_config())
    clone.build_from_config(model.get_build_config())
    assert [w.shape for w in clone.weights] == [w.shape for w in model.weights]


def test_presets_and_validation():
    assert {"mlp-tiny", "mlp-small", "unet-tiny", "unet-small", "unet-standard"} <= set(
        preset_names()
    )
    standard = build_network(
        preset("unet-standard", data_shape=(32, 32, 3), attn_resolutions=(16,))
    )
    assert 35_000_000 < standard.count_params() < 36_500_000  # DDPM's CIFAR-10 model: 35.7M
    with pytest.raises(ValueError, match="network preset must be one of"):
        preset("unet-huge")
    with pytest.raises(ValueError, match="dropout must be in"):
        preset("unet-tiny", dropout=1.5)
    with pytest.raises(ValueError, match="inverse_sigma' needs conditioning='log_sigma'"):
        NetworkConfig(family="mlp", output_scaling="inverse_sigma")
    with pytest.raises(ValueError, match="U-Net needs data_shape"):
        preset("unet-tiny", data_shape=(2,))
    with pytest.raises(ValueError, match="family must be one of"):
        NetworkConfig(family="transformer")


def test_bfloat16_precision_computes_in_bfloat16_and_returns_float32():
    model = build_network(preset("unet-tiny", precision="mixed_bfloat16"))
    assert model.conv_in.compute_dtype == "bfloat16" and model.conv_in.kernel.dtype == "float32"
    assert model(tf.zeros([1, 28, 28, 1]), tf.constant([3])).dtype == tf.float32


def test_initial_weights_are_a_function_of_config_and_seed():
    cfg = preset("unet-tiny")
    a, b, c = build_network(cfg, seed=1), build_network(cfg, seed=1), build_network(cfg, seed=2)
    for wa, wb in zip(a.weights, b.weights, strict=True):
        np.testing.assert_array_equal(wa.numpy(), wb.numpy())
    assert any(
        not np.array_equal(wa.numpy(), wc.numpy())
        for wa, wc in zip(a.weights, c.weights, strict=True)
    )
    # Deliberate constants survive: the zero-initialised output layer and GroupNorm's gamma.
    np.testing.assert_array_equal(a.conv_out.kernel.numpy(), 0.0)
    np.testing.assert_array_equal(a.norm_out.gamma.numpy(), 1.0)
    kernel = a.conv_in.kernel.numpy()
    limit = np.sqrt(6.0 / (9 * 1 + 9 * 8))
    assert np.abs(kernel).max() <= limit and kernel.std() == pytest.approx(
        limit / np.sqrt(3), rel=0.3
    )


def _group_norm_float64(x, gamma, beta, groups, epsilon=1e-5):
    """The textbook form in float64: reshape to [B, H, W, G, C/G], normalise over (H, W, C/G)."""
    b, h, w, c = x.shape
    grouped = tf.reshape(x, [b, h, w, groups, c // groups])
    mean, var = tf.nn.moments(grouped, axes=[1, 2, 4], keepdims=True)
    xhat = tf.reshape((grouped - mean) / tf.sqrt(var + epsilon), [b, h, w, c])
    return xhat * gamma + beta


@pytest.mark.parametrize("channels,groups", [(64, 32), (16, 4), (8, 8), (12, 1)])
def test_group_norm_value_and_gradients_match_the_float64_definition(channels, groups):
    rng = np.random.default_rng(channels + groups)
    # An offset of 3 and scale 2: a one-pass E[x^2] - E[x]^2 variance would lose digits here.
    x = rng.normal(3.0, 2.0, size=(3, 5, 7, channels))
    gamma, beta = rng.normal(size=channels), rng.normal(size=channels)
    upstream = rng.normal(size=x.shape)  # a random cotangent: checks the whole Jacobian-vector map

    def gradients(fn, dtype):
        args = [tf.constant(v, dtype) for v in (x, gamma, beta)]
        with tf.GradientTape() as tape:
            tape.watch(args)
            y = fn(*args)
            loss = tf.reduce_sum(y * tf.constant(upstream, dtype))
        return [y.numpy().astype(np.float64)] + [
            g.numpy().astype(np.float64) for g in tape.gradient(loss, args)
        ]

    ours = gradients(lambda *a: layers.group_norm(*a, groups=groups, epsilon=1e-5), tf.float32)
    reference = gradients(lambda *a: _group_norm_float64(*a, groups=groups), tf.float64)
    for name, got, want in zip(("y", "dx", "dgamma", "dbeta"), ours, reference, strict=True):
        scale = np.abs(want).max()
        assert np.abs(got - want).max() <= 2e-5 * scale, name


def test_group_norm_in_bfloat16_keeps_float32_statistics():
    x = tf.random.stateless_normal([2, 4, 4, 8], seed=[1, 2]) * 0.5 + 100.0
    y = layers.group_norm(tf.cast(x, tf.bfloat16), tf.ones([8]), tf.zeros([8]), 4, 1e-5)
    assert y.dtype == tf.bfloat16
    # bf16 holds 100 to within 0.5: normalised values must still have mean ~0 and std ~1.
    y32 = tf.cast(y, tf.float32).numpy().reshape(2, 16, 4, 2)
    assert np.abs(y32.mean(axis=(1, 3))).max() < 0.05
    assert np.abs(y32.std(axis=(1, 3)) - 1).max() < 0.05
