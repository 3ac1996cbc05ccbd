"""A conditional MLP for low-dimensional data (the score-matching tutorials' network).

x [B, d] and cond [B] (timestep or sigma) -> [B, d * output_channels_factor]. The condition's
embedding is added to every hidden layer; the output layer is zero-initialised, so an untrained
model predicts 0 (eps = 0, or a zero score).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from diffusion_lib.networks.config import NetworkConfig, compute_precision, register_family
from diffusion_lib.networks.layers import ConditionEmbedding, ConfigModel


@keras.saving.register_keras_serializable(package="diffusion_lib")
class ConditionalMLP(ConfigModel):
    def __init__(self, config: dict, **kwargs):
        super().__init__(**kwargs)
        self.config = dict(config)
        cfg = NetworkConfig(**self.config)
        policy = compute_precision(cfg.precision)
        self.conditioning, self.output_scaling = cfg.conditioning, cfg.output_scaling
        self.input_scaling = cfg.input_scaling
        self.embedding = ConditionEmbedding(
            cfg.embedding_dim, cfg.conditioning, cfg.num_classes, dtype=policy
        )
        self.inp = keras.layers.Dense(cfg.hidden, dtype=policy)
        self.hidden = [keras.layers.Dense(cfg.hidden, dtype=policy) for _ in range(cfg.depth)]
        self.cond_proj = [keras.layers.Dense(cfg.hidden, dtype=policy) for _ in range(cfg.depth)]
        out_dim = cfg.data_shape[0] * cfg.output_channels_factor
        self.out = keras.layers.Dense(out_dim, kernel_initializer="zeros", dtype=policy)

    def call(self, x, cond, labels=None, training=False, seed=None):
        if self.input_scaling == "unit_variance":
            x = x * tf.math.rsqrt(1.0 + tf.square(tf.cast(cond, x.dtype)))[:, None]
        emb = tf.nn.silu(self.embedding(cond, labels))
        h = self.inp(tf.cast(x, self.compute_dtype))
        for dense, proj in zip(self.hidden, self.cond_proj, strict=True):
            h = dense(tf.nn.silu(h)) + proj(emb)
        out = tf.cast(self.out(tf.nn.silu(h)), tf.float32)
        if self.output_scaling == "inverse_sigma":
            out = out / tf.cast(cond, tf.float32)[:, None]
        return out


@register_family("mlp")
def build_mlp(config: NetworkConfig) -> keras.Model:
    return ConditionalMLP.build_for(config)
