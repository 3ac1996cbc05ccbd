"""The network families as build_network makes them (networks/__init__.py, mlp.py, unet.py):
shapes at 28/32 and odd sizes, zero-initialised outputs, conditioning, dropout determinism,
serialisation and bfloat16 compute."""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from diffusion_lib.networks import build_network, preset

pytestmark = pytest.mark.cost(30)


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


@pytest.mark.parametrize("name", ["mlp-tiny", "unet-tiny"])
def test_class_labels_change_the_output_and_none_is_the_null_class(name):
    """num_classes K: labels 0..K-1 each give their own output, K is "no label" (what labels=None
    means); a network with K = 0 takes no labels and has no class weights."""
    model = build_network(preset(name, num_classes=3))
    _perturb_output_layer(model)
    for weight in model.weights:  # the class table: make the classes differ from the start
        if "embeddings" in weight.path:
            weight.assign(np.random.default_rng(1).normal(0, 1, weight.shape).astype(np.float32))
    shape = model.config["data_shape"]
    x = tf.random.stateless_normal([4, *shape], [1, 2])
    t = tf.constant([5, 5, 5, 5])
    outputs = [model(x, t, labels=tf.fill([4], k)).numpy() for k in range(4)]
    for i in range(4):
        for j in range(i):
            assert np.abs(outputs[i] - outputs[j]).max() > 1e-4, (i, j)
    np.testing.assert_array_equal(model(x, t).numpy(), outputs[3])
    mixed = model(x, t, labels=tf.constant([0, 1, 2, 3])).numpy()
    for row in range(4):
        np.testing.assert_allclose(mixed[row], outputs[row][row], atol=1e-5)
    plain = build_network(preset(name))
    assert len(plain.weights) == len(model.weights) - 1
    with pytest.raises(ValueError, match="not class-conditional"):
        plain(x, t, labels=tf.zeros([4], tf.int32))
    with pytest.raises(ValueError, match="num_classes must be >= 0"):
        preset(name, num_classes=-2)


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


@pytest.mark.parametrize("name", ["mlp-tiny", "unet-tiny"])
def test_unit_variance_input_scaling_feeds_x_over_sqrt_one_plus_sigma_squared(name):
    """The scaled network is the plain one applied to x / sqrt(1 + sigma^2), per example; and
    it refuses a timestep-conditioned network."""
    cfg = preset(name, conditioning="log_sigma", input_scaling="unit_variance")
    if name == "unet-tiny":
        cfg = dataclasses.replace(cfg, data_shape=(8, 8, 1))
    model = build_network(cfg)
    _perturb_output_layer(model)
    plain = build_network(dataclasses.replace(cfg, input_scaling="none"))
    plain.set_weights(model.get_weights())
    sigma = tf.constant([0.01, 1.0, 3.0, 50.0])
    x = tf.random.stateless_normal([4, *cfg.data_shape], [1, 2]) * 5.0
    scale = tf.reshape(tf.math.rsqrt(1.0 + sigma**2), [4] + [1] * len(cfg.data_shape))
    np.testing.assert_allclose(
        model(x, sigma).numpy(), plain(x * scale, sigma).numpy(), rtol=1e-5, atol=1e-6
    )
    assert not np.allclose(model(x, sigma).numpy(), plain(x, sigma).numpy(), atol=1e-3)
    with pytest.raises(ValueError, match="input_scaling"):
        preset(name, input_scaling="unit_variance").validate()


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


def test_bfloat16_precision_computes_in_bfloat16_and_returns_float32():
    model = build_network(preset("unet-tiny", precision="mixed_bfloat16"))
    assert model.conv_in.compute_dtype == "bfloat16" and model.conv_in.kernel.dtype == "float32"
    assert model(tf.zeros([1, 28, 28, 1]), tf.constant([3])).dtype == tf.float32


def test_auto_precision_is_bfloat16_only_where_the_cpu_multiplies_it():
    """ "auto" reads the CPU's flags: bfloat16 units (AVX512-BF16 or AMX-BF16) -> mixed bfloat16,
    anything else float32 (emulated bfloat16 is slower than float32, not faster)."""
    from diffusion_lib.networks.config import compute_precision, cpu_has_bfloat16

    sapphire = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
    cooper = "flags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n"
    zen2 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\nbugs\t\t: sysret_ss_attrs\n"
    assert cpu_has_bfloat16(sapphire) and cpu_has_bfloat16(cooper)
    assert not cpu_has_bfloat16(zen2) and not cpu_has_bfloat16("")
    assert not cpu_has_bfloat16("flags : avx512_bf16x\n")  # whole flags only
    for explicit in ("float32", "mixed_bfloat16", "mixed_float16"):
        assert compute_precision(explicit) == explicit
    here = (
        "mixed_bfloat16"
        if cpu_has_bfloat16() and not tf.config.list_physical_devices("GPU")
        else "float32"
    )
    assert compute_precision("auto") == here
    model = build_network(preset("unet-tiny", precision="auto"))
    assert model.conv_in.compute_dtype == ("bfloat16" if here == "mixed_bfloat16" else "float32")
    assert model.conv_in.kernel.dtype == "float32"  # a checkpoint restores under any policy
    assert model(tf.zeros([1, 28, 28, 1]), tf.constant([3])).dtype == tf.float32
