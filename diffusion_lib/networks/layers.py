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

CONDITIONINGS = ("timestep", "log_sigma")
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
    """The scalar per example that gets embedded: the timestep, or LOG_SIGMA_SCALE * log sigma."""
    if mode == "timestep":
        return tf.cast(cond, tf.float32)
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


@keras.saving.register_keras_serializable(package="diffusion_lib")
class ConditionEmbedding(keras.layers.Layer):
    """cond [B] -> [B, dim]: sinusoidal embedding of the timestep or log sigma, then a 2-layer MLP."""

    def __init__(self, dim: int, mode: str = "timestep", **kwargs):
        super().__init__(**kwargs)
        if mode not in CONDITIONINGS:
            raise ValueError(f"conditioning must be one of {CONDITIONINGS}, got {mode!r}")
        self.dim, self.mode = dim, mode
        self.dense_in = keras.layers.Dense(dim, activation="silu", dtype=self.dtype_policy)
        self.dense_out = keras.layers.Dense(dim, dtype=self.dtype_policy)

    def call(self, cond):
        embedding = sinusoidal_embedding(conditioning_values(cond, self.mode), self.dim)
        return self.dense_out(self.dense_in(tf.cast(embedding, self.compute_dtype)))

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "mode": self.mode}


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
        self.norm1 = keras.layers.GroupNormalization(
            _groups(in_channels, self.norm_groups), epsilon=1e-5, dtype=policy
        )
        self.conv1 = keras.layers.Conv2D(self.channels, 3, padding="same", dtype=policy)
        self.emb_proj = keras.layers.Dense(self.channels, dtype=policy)
        self.norm2 = keras.layers.GroupNormalization(
            _groups(self.channels, self.norm_groups), epsilon=1e-5, dtype=policy
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
        h = self.conv1(tf.nn.silu(self.norm1(x)))
        h = h + self.emb_proj(tf.nn.silu(emb))[:, None, None, :]
        h = tf.nn.silu(self.norm2(h))
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
        self.norm = keras.layers.GroupNormalization(
            _groups(channels, self.norm_groups), epsilon=1e-5, dtype=policy
        )
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
