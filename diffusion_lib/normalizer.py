"""The map between a dataset's stored values (data units) and the network's inputs (model units),
both directions, written once.

    images   uint8 [0, 255]  <->  float [-1, 1]        x / 127.5 - 1,  round((x + 1) * 127.5)
    points   float           <->  standardised         (x - mean) / std,  x * std + mean

`Normalizer.of(manifest)` reads the kind and the per-dimension statistics from a dataset's
manifest; `IMAGES` is the fixed image map (it needs no statistics).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from diffusion_lib.sde_likelihood import dequantize

KINDS = ("image", "points")
_MIN_STD = 1e-12  # a constant dimension stays finite


@dataclasses.dataclass(frozen=True, eq=False)
class Normalizer:
    kind: str
    mean: np.ndarray | None = None
    std: np.ndarray | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "points" and (self.mean is None or self.std is None):
            raise ValueError("points need the data's mean and std")

    @classmethod
    def of(cls, manifest) -> Normalizer:
        """The normalizer of a dataset, from its manifest (its `kind` and `stats`)."""
        if manifest.kind == "image":
            return IMAGES
        stats = manifest.stats
        return cls(
            "points",
            np.asarray(stats["mean"], np.float64),
            np.maximum(np.asarray(stats["std"], np.float64), _MIN_STD),
        )

    @property
    def is_image(self) -> bool:
        return self.kind == "image"

    def to_model(self, values, dtype=np.float64) -> np.ndarray:
        """Stored values -> model units (numpy), computed in `dtype` (float64 by default)."""
        values = np.asarray(values)
        if self.is_image:
            return values.astype(dtype) / 127.5 - 1.0
        return ((values - self.mean) / self.std).astype(dtype, copy=False)

    def dequantized(self, pixels, seed) -> tuple[np.ndarray, float]:
        """8-bit images -> (x, log_abs_scale): uniformly dequantised points in model units,
        x = 2 (k + u) / 256 - 1 with u ~ U[0, 1) from `seed`, and sum_d log |dx/dv| = D log 2
        for the bits/dim of `sde_likelihood.bits_per_dim` (v = (k + u) / 256 in [0, 1))."""
        if not self.is_image:
            raise ValueError("dequantisation is for 8-bit images; these are points")
        v = dequantize(pixels, seed)
        return 2.0 * v - 1.0, float(np.prod(v.shape[1:]) * np.log(2.0))

    def to_model_tf(self):
        """The same map as a float32 TensorFlow function, for tf.data pipelines."""
        if self.is_image:
            return lambda x: tf.cast(x, tf.float32) / 127.5 - 1.0
        mean, std = tf.constant(self.mean, tf.float32), tf.constant(self.std, tf.float32)
        return lambda x: (x - mean) / std

    def to_data(self, x) -> np.ndarray:
        """Model units -> data units: uint8 images (clipped to [-1, 1] first), float64 points.
        Raises ValueError on NaN or Inf."""
        x = np.asarray(x)
        if not np.all(np.isfinite(x)):
            raise ValueError("samples contain NaN or Inf")
        if self.is_image:
            return np.clip(np.rint((x + 1.0) * 127.5), 0, 255).astype(np.uint8)
        return x.astype(np.float64) * self.std + self.mean

    def score_to_data(self, score) -> np.ndarray:
        """A score in model units -> the score of the data density (chain rule: s_z / std)."""
        score = np.asarray(score)
        return score / 127.5 if self.is_image else score / self.std


IMAGES = Normalizer("image")
