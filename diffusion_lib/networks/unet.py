"""The DDPM U-Net (Ronneberger et al. 2015 as adapted by Ho et al. 2020, appendix B).

x [B, H, W, C] and cond [B] -> [B, H, W, C * output_channels_factor]:
conv in; per resolution level `num_res_blocks` residual blocks (GroupNorm, SiLU, dropout, the
condition embedding added) with self-attention where the resolution is in `attn_resolutions`,
then a stride-2 downsampling; a middle of res-attention-res; the mirror image going up with
skip connections; GroupNorm, SiLU and a zero-initialised output convolution.

Odd sizes work: a stride-2 'same' convolution takes 7 to 4, and upsampling crops back to the
skip connection's size (4 -> 8 -> 7), so 28x28 (28 -> 14 -> 7 -> 4) and 32x32 both run.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from diffusion_lib.networks.config import NetworkConfig, compute_precision, register_family
from diffusion_lib.networks.layers import (
    AttentionBlock,
    ConditionEmbedding,
    ConfigModel,
    GroupNorm,
    ResBlock,
)


@keras.saving.register_keras_serializable(package="diffusion_lib")
class UNet(ConfigModel):
    def __init__(self, config: dict, **kwargs):
        super().__init__(**kwargs)
        self.config = dict(config)
        cfg = NetworkConfig(**self.config)
        policy, groups = compute_precision(cfg.precision), cfg.norm_groups
        self.conditioning, self.output_scaling = cfg.conditioning, cfg.output_scaling
        self.input_scaling = cfg.input_scaling
        ch = cfg.base_channels
        self.embedding = ConditionEmbedding(4 * ch, cfg.conditioning, cfg.num_classes, dtype=policy)
        self.conv_in = keras.layers.Conv2D(ch, 3, padding="same", dtype=policy)
        salt = iter(range(10_000))  # a distinct dropout seed per residual block

        height = cfg.data_shape[0]
        self.down_blocks, self.downsamplers = [], []
        skip_channels = [ch]
        for level, mult in enumerate(cfg.channel_mults):
            blocks = []
            for _ in range(cfg.num_res_blocks):
                attention = (
                    AttentionBlock(groups, dtype=policy) if height in cfg.attn_resolutions else None
                )
                blocks.append(
                    (ResBlock(ch * mult, cfg.dropout, groups, next(salt), dtype=policy), attention)
                )
                skip_channels.append(ch * mult)
            self.down_blocks.append(blocks)
            if level != len(cfg.channel_mults) - 1:
                self.downsamplers.append(
                    keras.layers.Conv2D(ch * mult, 3, strides=2, padding="same", dtype=policy)
                )
                skip_channels.append(ch * mult)
                height = (height + 1) // 2
            else:
                self.downsamplers.append(None)

        mid = ch * cfg.channel_mults[-1]
        self.mid_res1 = ResBlock(mid, cfg.dropout, groups, next(salt), dtype=policy)
        self.mid_attn = AttentionBlock(groups, dtype=policy)
        self.mid_res2 = ResBlock(mid, cfg.dropout, groups, next(salt), dtype=policy)

        self.up_blocks, self.upsamplers = [], []
        for level, mult in reversed(list(enumerate(cfg.channel_mults))):
            blocks = []
            for _ in range(cfg.num_res_blocks + 1):
                skip_channels.pop()
                attention = (
                    AttentionBlock(groups, dtype=policy) if height in cfg.attn_resolutions else None
                )
                blocks.append(
                    (ResBlock(ch * mult, cfg.dropout, groups, next(salt), dtype=policy), attention)
                )
            self.up_blocks.append(blocks)
            if level != 0:
                self.upsamplers.append(
                    keras.layers.Conv2D(ch * mult, 3, padding="same", dtype=policy)
                )
                height = height * 2  # cropped to the skip's size at call time
            else:
                self.upsamplers.append(None)

        self.norm_out = GroupNorm(math.gcd(ch, groups), epsilon=1e-5, silu=True, dtype=policy)
        out_channels = cfg.data_shape[-1] * cfg.output_channels_factor
        self.conv_out = keras.layers.Conv2D(
            out_channels, 3, padding="same", kernel_initializer="zeros", dtype=policy
        )

    def call(self, x, cond, labels=None, training=False, seed=None):
        if self.input_scaling == "unit_variance":
            x = x * tf.math.rsqrt(1.0 + tf.square(tf.cast(cond, x.dtype)))[:, None, None, None]
        emb = self.embedding(cond, labels)
        h = self.conv_in(tf.cast(x, self.compute_dtype))
        skips = [h]
        for blocks, down in zip(self.down_blocks, self.downsamplers, strict=True):
            for res, attention in blocks:
                h = res(h, emb, training=training, seed=seed)
                if attention is not None:
                    h = attention(h)
                skips.append(h)
            if down is not None:
                h = down(h)
                skips.append(h)
        h = self.mid_res2(
            self.mid_attn(self.mid_res1(h, emb, training=training, seed=seed)),
            emb,
            training=training,
            seed=seed,
        )
        for blocks, up in zip(self.up_blocks, self.upsamplers, strict=True):
            for res, attention in blocks:
                h = res(tf.concat([h, skips.pop()], axis=-1), emb, training=training, seed=seed)
                if attention is not None:
                    h = attention(h)
            if up is not None:
                target = tf.shape(skips[-1])
                h = tf.repeat(tf.repeat(h, 2, axis=1), 2, axis=2)[:, : target[1], : target[2], :]
                h = up(h)
        out = tf.cast(self.conv_out(self.norm_out(h)), tf.float32)
        if self.output_scaling == "inverse_sigma":
            out = out / tf.cast(cond, tf.float32)[:, None, None, None]
        return out


@register_family("unet")
def build_unet(config: NetworkConfig) -> keras.Model:
    return UNet.build_for(config)
