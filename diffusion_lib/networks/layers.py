"""Building blocks shared by the networks: conditioning embeddings, residual and attention blocks.

Dropout here is stateless: a block draws its mask from an explicit seed (a [2] int tensor the
training step derives from its own seed), never from a stateful generator. That keeps a training
step a pure function of (weights, batch, seed), which is what exact resume and replica-count-
independent training need, and it is safe under every distribution strategy.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from diffusion_lib import kernels

# What a network's condition is and which scalar of it is embedded: "timestep" a DDPM timestep
# (itself), "log_sigma" a noise level sigma (LOG_SIGMA_SCALE * ln sigma), "c_noise" a noise level
# sigma (EDM's c_noise = ln(sigma) / 4, Karras et al. 2022, table 1).
CONDITIONINGS = ("timestep", "log_sigma", "c_noise")
# log sigma spans about [-7, 5] for sigma in [1e-3, 100]; scaled by this it covers the same
# frequency range of the sinusoidal embedding as timesteps in [0, 1000] do.
LOG_SIGMA_SCALE = 100.0


def sinusoidal_embedding(values: tf.Tensor, dim: int, max_period: float = 10_000.0) -> tf.Tensor:
    """[B] float -> [B, dim]: cos/sin of values at geometric frequencies (DDPM, Transformer)."""
    half = dim // 2
    freqs = tf.exp(-math.log(max_period) * tf.range(half, dtype=tf.float32) / half)
    args = tf.cast(values, tf.float32)[:, None] * freqs[None, :]
    embedding = tf.concat([tf.cos(args), tf.sin(args)], axis=-1)
    if dim % 2:
        embedding = tf.pad(embedding, [[0, 0], [0, 1]])
    return embedding


def conditioning_values(cond: tf.Tensor, mode: str) -> tf.Tensor:
    """The scalar per example that gets embedded (CONDITIONINGS): the timestep, LOG_SIGMA_SCALE *
    ln sigma, or ln(sigma) / 4."""
    if mode == "timestep":
        return tf.cast(cond, tf.float32)
    if mode == "c_noise":
        return 0.25 * tf.math.log(tf.cast(cond, tf.float32))
    return LOG_SIGMA_SCALE * tf.math.log(tf.cast(cond, tf.float32))


def fold_seed(seed: tf.Tensor | None, salt: int) -> tf.Tensor | None:
    return None if seed is None else tf.random.experimental.stateless_fold_in(seed, salt)


def stateless_dropout(
    x: tf.Tensor, rate: float, training: bool, seed: tf.Tensor | None
) -> tf.Tensor:
    if not training or rate <= 0.0:
        return x
    if seed is None:
        raise ValueError("dropout > 0 in training needs a seed: call the model with seed=[2] ints")
    return tf.nn.experimental.stateless_dropout(x, rate, seed=seed)


def _groups(channels: int, wanted: int) -> int:
    """The largest group count <= wanted that divides channels (GroupNorm needs a divisor)."""
    return math.gcd(channels, wanted)


def group_norm(
    x: tf.Tensor,
    gamma: tf.Tensor,
    beta: tf.Tensor,
    groups: int,
    epsilon: float,
    silu: bool = False,
) -> tf.Tensor:
    """GroupNorm (Wu & He 2018) of x [B, H, W, C] with per-channel gamma, beta [C].

    Written as per-channel sums over (H, W) followed by a sum over each group's channels, and a
    hand-derived gradient, because the straightforward form (reshape to [B, H, W, G, C/G] and
    reduce over three axes) is memory-bound on CPU and slow when C/G is small: at C = 64, G = 32
    Keras's GroupNormalization takes 17 ms forward and 40 ms forward + backward for a
    [64, 28, 28, 64] tensor here, this one 6 ms and 15 ms. Statistics are float32 for any input
    dtype; the mean is taken first and the variance about it (two passes, no E[x^2] - E[x]^2
    cancellation).

    silu=True returns silu(GroupNorm(x)), with the SiLU applied in float32 before the cast back
    and its derivative folded into the same gradient, instead of a separate SiLU whose backward
    recomputes the sigmoid in the compute dtype. Under mixed bfloat16 that makes the pair's
    forward + backward faster (one pass over the activations instead of two); in float32 it is
    the same speed and the forward the same bits. The backward recomputes y and its sigmoid
    from x rather than keeping them: only x's float32 copy is held from forward to backward, as
    without the SiLU, at the same speed and with the same bits.

    On a CPU, float32 and bfloat16 inputs go to the compiled kernel of `kernels` (the same
    math in one op each way, faster: `compiled_group_norm`), unless
    DIFFUSION_LIB_KERNELS=off or it cannot be built; `tensorflow_group_norm` is the reference
    and the GPU path.
    """
    compiled = x.dtype in (tf.float32, tf.bfloat16) and not kernels.inside_xla()
    ops = kernels.group_norm_ops() if compiled else None
    if ops is not None:
        return compiled_group_norm(ops, x, gamma, beta, groups, epsilon, silu)
    return tensorflow_group_norm(x, gamma, beta, groups, epsilon, silu)


def tensorflow_group_norm(x, gamma, beta, groups, epsilon, silu=False):
    """`group_norm` in TensorFlow's ops, whatever `kernels` has."""
    channels = x.shape[-1]
    per_group = channels // groups
    dtype = x.dtype

    def grouped(per_channel):  # [B, C] -> [B, G, 1], the mean over each group's channels
        return tf.reduce_mean(tf.reshape(per_channel, [-1, groups, per_group]), -1, keepdims=True)

    def to_channels(per_group_value):  # [B, G, 1] -> [B, 1, 1, C]
        spread = tf.broadcast_to(per_group_value, [tf.shape(per_group_value)[0], groups, per_group])
        return tf.reshape(spread, [-1, 1, 1, channels])

    @tf.custom_gradient
    def normalise(x, gamma, beta):
        x32 = tf.cast(x, tf.float32)
        gamma32, beta32 = tf.cast(gamma, tf.float32), tf.cast(beta, tf.float32)
        mean = to_channels(grouped(tf.reduce_mean(x32, axis=[1, 2])))  # [B, 1, 1, C]
        var = grouped(tf.reduce_mean(tf.math.squared_difference(x32, mean), axis=[1, 2]))
        inv = to_channels(tf.math.rsqrt(var + epsilon))  # [B, 1, 1, C]
        scale = inv * gamma32
        shift = beta32 - mean * scale
        y = x32 * scale + shift
        out = y * tf.sigmoid(y) if silu else y

        def grad(dy):
            with tf.name_scope("group_norm_grad"):  # the gradient's ops are named in profiles
                return _grad(dy)

        def _grad(dy):
            # y = gamma * xhat + beta, xhat = (x - mean) * inv, n = H * W * C/G per group:
            # dx = inv * (dxhat - mean_g(dxhat) - xhat * mean_g(dxhat * xhat)), dxhat = dy * gamma,
            # collected as dx = dy * a + x * b + c with a, b, c per (example, channel).
            dy32 = tf.cast(dy, tf.float32)
            if silu:  # d silu(y) / dy = s (1 + y (1 - s)), s = sigmoid(y), both recomputed
                y_again = x32 * scale + shift
                gate = tf.sigmoid(y_again)
                dy32 = dy32 * (gate * (1.0 + y_again * (1.0 - gate)))
            sum_dy = tf.reduce_mean(dy32, axis=[1, 2])  # [B, C], means over (H, W)
            sum_xdy = tf.reduce_mean(x32 * dy32, axis=[1, 2])
            mean_c, inv_c = mean[:, 0, 0, :], inv[:, 0, 0, :]
            xhat_dy = inv_c * (sum_xdy - mean_c * sum_dy)  # [B, C]: mean over (H, W) of xhat * dy
            d_mean = to_channels(grouped(gamma32 * sum_dy))  # mean_g(dxhat)
            d_var = to_channels(grouped(gamma32 * xhat_dy))  # mean_g(dxhat * xhat)
            b = -inv * inv * d_var
            c = -inv * d_mean - b * mean
            dx = dy32 * scale + (x32 * b + c)
            hw = tf.cast(tf.shape(x)[1] * tf.shape(x)[2], tf.float32)
            d_gamma = tf.reduce_sum(xhat_dy, axis=0) * hw
            d_beta = tf.reduce_sum(sum_dy, axis=0) * hw
            return tf.cast(dx, dtype), tf.cast(d_gamma, gamma.dtype), tf.cast(d_beta, beta.dtype)

        return tf.cast(out, dtype), grad

    return normalise(x, gamma, beta)


def compiled_group_norm(ops, x, gamma, beta, groups, epsilon, silu=False):
    """`group_norm` by the compiled kernel's `ops` (`kernels.group_norm_ops()`): the same math,
    one op each way."""

    @tf.custom_gradient
    def normalise(x, gamma32, beta32):
        with tf.name_scope("group_norm"):
            y, mean, inv = ops.diffusion_group_norm(
                x, gamma32, beta32, groups=groups, epsilon=epsilon, silu=silu
            )

        def grad(dy):
            with tf.name_scope("group_norm_grad"):
                return ops.diffusion_group_norm_grad(
                    dy, x, gamma32, beta32, mean, inv, groups=groups, silu=silu
                )

        return y, grad

    return normalise(x, tf.cast(gamma, tf.float32), tf.cast(beta, tf.float32))


@keras.saving.register_keras_serializable(package="diffusion_lib")
class GroupNorm(keras.layers.Layer):
    """GroupNorm over the last axis of [B, H, W, C] through `group_norm`; gamma = 1, beta = 0 at
    init. silu=True: SiLU of the result, in the same op (see `group_norm`)."""

    def __init__(self, groups: int, epsilon: float = 1e-5, silu: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.groups, self.epsilon, self.silu = groups, epsilon, silu

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels % self.groups:
            raise ValueError(
                f"GroupNorm: {channels} channels do not split into {self.groups} groups"
            )
        self.gamma = self.add_weight(name="gamma", shape=(channels,), initializer="ones")
        self.beta = self.add_weight(name="beta", shape=(channels,), initializer="zeros")

    def call(self, x):
        # float32 parameters whatever the compute dtype: the statistics are float32 anyway.
        gamma, beta = tf.cast(self.gamma, tf.float32), tf.cast(self.beta, tf.float32)
        return group_norm(x, gamma, beta, self.groups, self.epsilon, self.silu)

    def get_config(self):
        return {
            **super().get_config(),
            "groups": self.groups,
            "epsilon": self.epsilon,
            "silu": self.silu,
        }


@keras.saving.register_keras_serializable(package="diffusion_lib")
class ConditionEmbedding(keras.layers.Layer):
    """cond [B] -> [B, dim]: sinusoidal embedding of the timestep or log sigma, then a 2-layer MLP.

    With `num_classes` K > 0, labels [B] in [0, K] add a learned class vector; label K is the
    null class (no label: the unconditional model of classifier-free guidance), which is also
    what labels=None means."""

    def __init__(self, dim: int, mode: str = "timestep", num_classes: int = 0, **kwargs):
        super().__init__(**kwargs)
        if mode not in CONDITIONINGS:
            raise ValueError(f"conditioning must be one of {CONDITIONINGS}, got {mode!r}")
        self.dim, self.mode, self.num_classes = dim, mode, num_classes
        self.dense_in = keras.layers.Dense(dim, activation="silu", dtype=self.dtype_policy)
        self.dense_out = keras.layers.Dense(dim, dtype=self.dtype_policy)
        self.classes = (
            keras.layers.Embedding(num_classes + 1, dim, dtype=self.dtype_policy)
            if num_classes
            else None
        )

    def call(self, cond, labels=None):
        embedding = sinusoidal_embedding(conditioning_values(cond, self.mode), self.dim)
        out = self.dense_out(self.dense_in(tf.cast(embedding, self.compute_dtype)))
        if self.classes is None:
            if labels is not None:
                raise ValueError("labels given to a network that is not class-conditional")
            return out
        if labels is None:
            labels = tf.fill(tf.shape(cond)[:1], self.num_classes)
        return out + self.classes(tf.cast(labels, tf.int32))

    def get_config(self):
        return {
            **super().get_config(),
            "dim": self.dim,
            "mode": self.mode,
            "num_classes": self.num_classes,
        }


@keras.saving.register_keras_serializable(package="diffusion_lib")
class ResBlock(keras.layers.Layer):
    """GroupNorm-SiLU-Conv, + embedding projection, GroupNorm-SiLU-Dropout-Conv (zero-init), + skip."""

    def __init__(
        self, channels: int, dropout: float = 0.0, norm_groups: int = 32, salt: int = 0, **kwargs
    ):
        super().__init__(**kwargs)
        self.channels, self.dropout, self.norm_groups, self.salt = (
            channels,
            dropout,
            norm_groups,
            salt,
        )

    def build(self, input_shape):
        in_channels = input_shape[-1]
        policy = self.dtype_policy
        self.norm1 = GroupNorm(
            _groups(in_channels, self.norm_groups), epsilon=1e-5, silu=True, dtype=policy
        )
        self.conv1 = keras.layers.Conv2D(self.channels, 3, padding="same", dtype=policy)
        self.emb_proj = keras.layers.Dense(self.channels, dtype=policy)
        self.norm2 = GroupNorm(
            _groups(self.channels, self.norm_groups), epsilon=1e-5, silu=True, dtype=policy
        )
        self.conv2 = keras.layers.Conv2D(
            self.channels, 3, padding="same", kernel_initializer="zeros", dtype=policy
        )
        self.skip = (
            None
            if in_channels == self.channels
            else keras.layers.Conv2D(self.channels, 1, dtype=policy)
        )

    def call(self, x, emb, training=False, seed=None):
        h = self.conv1(self.norm1(x))
        h = h + self.emb_proj(tf.nn.silu(emb))[:, None, None, :]
        h = self.norm2(h)
        h = stateless_dropout(h, self.dropout, training, fold_seed(seed, self.salt))
        h = self.conv2(h)
        return (x if self.skip is None else self.skip(x)) + h

    def get_config(self):
        return {
            **super().get_config(),
            "channels": self.channels,
            "dropout": self.dropout,
            "norm_groups": self.norm_groups,
            "salt": self.salt,
        }


@keras.saving.register_keras_serializable(package="diffusion_lib")
class AttentionBlock(keras.layers.Layer):
    """Single-head self-attention over all positions, residual, output projection zero-init."""

    def __init__(self, norm_groups: int = 32, **kwargs):
        super().__init__(**kwargs)
        self.norm_groups = norm_groups

    def build(self, input_shape):
        channels = input_shape[-1]
        policy = self.dtype_policy
        self.norm = GroupNorm(_groups(channels, self.norm_groups), epsilon=1e-5, dtype=policy)
        self.qkv = keras.layers.Dense(3 * channels, dtype=policy)
        self.proj = keras.layers.Dense(channels, kernel_initializer="zeros", dtype=policy)

    def call(self, x):
        shape = tf.shape(x)
        channels = x.shape[-1]
        h = tf.reshape(self.norm(x), [shape[0], shape[1] * shape[2], channels])
        q, k, v = tf.split(self.qkv(h), 3, axis=-1)
        weights = tf.nn.softmax(tf.matmul(q, k, transpose_b=True) * (channels**-0.5), axis=-1)
        out = self.proj(tf.matmul(weights, v))
        return x + tf.reshape(out, shape)

    def get_config(self):
        return {**super().get_config(), "norm_groups": self.norm_groups}


class ConfigModel(keras.Model):
    """A model described by a NetworkConfig dict: serialised as it, built by one call on zeros."""

    @classmethod
    def build_for(cls, config) -> keras.Model:
        """The model of a NetworkConfig with its variables created."""
        model = cls(config.to_dict())
        model.build_from_config({"data_shape": list(config.data_shape)})
        return model

    def get_config(self):
        return {"config": self.config, "name": self.name}

    def get_build_config(self):
        return {"data_shape": list(self.config["data_shape"])}

    def build_from_config(self, config):
        """Creates the variables on load by one call on zeros (the layers build lazily)."""
        cond = (
            tf.zeros([1], tf.int32) if self.config["conditioning"] == "timestep" else tf.ones([1])
        )
        self(tf.zeros([1, *config["data_shape"]]), cond)
