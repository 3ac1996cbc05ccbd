"""networks/layers.py: GroupNorm's value and gradients (alone and fused with SiLU) against the
float64 definition, and its float32 statistics under bfloat16, by both ways of computing it:
the compiled CPU kernel (diffusion_lib.kernels) and TensorFlow's ops."""

import numpy as np
import pytest
import tensorflow as tf

from diffusion_lib import kernels
from diffusion_lib.networks import layers


@pytest.fixture(params=["compiled", "tensorflow"], autouse=True)
def way(request, monkeypatch):
    """Each test runs with the compiled kernel (built here: a build failure fails the test) and
    with TensorFlow's ops."""
    ops = kernels.load() if request.param == "compiled" else None
    monkeypatch.setattr(kernels, "group_norm_ops", lambda: ops)
    return request.param


def _group_norm_float64(x, gamma, beta, groups, epsilon=1e-5):
    """The textbook form in float64: reshape to [B, H, W, G, C/G], normalise over (H, W, C/G)."""
    b, h, w, c = x.shape
    grouped = tf.reshape(x, [b, h, w, groups, c // groups])
    mean, var = tf.nn.moments(grouped, axes=[1, 2, 4], keepdims=True)
    xhat = tf.reshape((grouped - mean) / tf.sqrt(var + epsilon), [b, h, w, c])
    return xhat * gamma + beta


@pytest.mark.parametrize("silu", [False, True])
@pytest.mark.parametrize("channels,groups", [(64, 32), (16, 4), (8, 8), (12, 1)])
def test_group_norm_value_and_gradients_match_the_float64_definition(channels, groups, silu):
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

    def reference(*args):
        y = _group_norm_float64(*args, groups=groups)
        return y * tf.sigmoid(y) if silu else y

    ours = gradients(
        lambda *a: layers.group_norm(*a, groups=groups, epsilon=1e-5, silu=silu), tf.float32
    )
    reference = gradients(reference, tf.float64)
    for name, got, want in zip(("y", "dx", "dgamma", "dbeta"), ours, reference, strict=True):
        scale = np.abs(want).max()
        assert np.abs(got - want).max() <= 2e-5 * scale, name


def test_group_norm_of_a_large_image_keeps_its_statistics_accurate(way):
    """65,536 pixels a channel, offset 3. The kernel sums blocks of pixels in float32 and the
    blocks in double; TensorFlow's float32 reductions drift further (5.5e-5 here)."""
    rng = np.random.default_rng(7)
    x = rng.normal(3.0, 0.5, size=(1, 256, 256, 4))
    y = layers.group_norm(tf.constant(x, tf.float32), tf.ones([4]), tf.zeros([4]), 2, 1e-5)
    want = _group_norm_float64(tf.constant(x), np.ones(4), np.zeros(4), groups=2).numpy()
    assert np.abs(y.numpy() - want).max() < (2e-5 if way == "compiled" else 1e-4)


def test_group_norm_in_bfloat16_keeps_float32_statistics():
    x = tf.random.stateless_normal([2, 4, 4, 8], seed=[1, 2]) * 0.5 + 100.0
    y = layers.group_norm(tf.cast(x, tf.bfloat16), tf.ones([8]), tf.zeros([8]), 4, 1e-5)
    assert y.dtype == tf.bfloat16
    # bf16 holds 100 to within 0.5: normalised values must still have mean ~0 and std ~1.
    y32 = tf.cast(y, tf.float32).numpy().reshape(2, 16, 4, 2)
    assert np.abs(y32.mean(axis=(1, 3))).max() < 0.05
    assert np.abs(y32.std(axis=(1, 3)) - 1).max() < 0.05
