"""Argument checks shared by the math modules.

Errors name the argument. Checks on values (finiteness) raise ValueError eagerly and,
inside a `tf.function`, become `tf.debugging` assertions whose message names the
argument; checks on shapes and dtypes use static information and raise at trace time.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf


def as_float_tensor(x: object, name: str) -> tf.Tensor:
    """Converts `x` to a tensor and requires a floating dtype (no silent int -> float)."""
    x = tf.convert_to_tensor(x)
    if not x.dtype.is_floating:
        raise TypeError(f"{name} must be a floating tensor, got dtype {x.dtype.name}")
    return x


def check_finite(x: tf.Tensor, name: str) -> tf.Tensor:
    """Returns `x`, raising if it holds NaN or Inf."""
    if tf.executing_eagerly():
        if not bool(tf.reduce_all(tf.math.is_finite(x))):
            raise ValueError(f"{name} contains NaN or Inf")
        return x
    return tf.debugging.assert_all_finite(x, f"{name} contains NaN or Inf")


def check_batch_vector(t: tf.Tensor, x: tf.Tensor, name: str) -> tf.Tensor:
    """Requires `t` to be a rank-1 tensor of length batch(x). Returns it as a tensor."""
    t = tf.convert_to_tensor(t)
    if t.shape.rank != 1:
        raise ValueError(f"{name} must have shape [B], got {t.shape}")
    if t.shape[0] is not None and x.shape[0] is not None and t.shape[0] != x.shape[0]:
        raise ValueError(f"{name} has batch {t.shape[0]} but x has batch {x.shape[0]}")
    return t


def check_timesteps(t: object, x: tf.Tensor, num_timesteps: int, name: str = "t") -> tf.Tensor:
    """Integer timesteps of shape [B] in [0, num_timesteps)."""
    t = check_batch_vector(t, x, name)
    if not t.dtype.is_integer:
        raise TypeError(f"{name} must be an integer tensor of timesteps, got dtype {t.dtype.name}")
    t = tf.cast(t, tf.int32)
    if tf.executing_eagerly():
        if int(tf.size(t)) and (
            int(tf.reduce_min(t)) < 0 or int(tf.reduce_max(t)) >= num_timesteps
        ):
            raise ValueError(f"{name} must lie in [0, {num_timesteps}), got {t.numpy().tolist()}")
        return t
    with tf.control_dependencies(
        [
            tf.debugging.assert_greater_equal(t, 0, message=f"{name} must be >= 0"),
            tf.debugging.assert_less(t, num_timesteps, message=f"{name} must be < {num_timesteps}"),
        ]
    ):
        return tf.identity(t)


def check_same_shape(a: tf.Tensor, b: tf.Tensor, name_a: str, name_b: str) -> None:
    """Raises if the static shapes of `a` and `b` are known to differ (no silent broadcast)."""
    if not a.shape.is_compatible_with(b.shape):
        raise ValueError(f"{name_a} has shape {a.shape} but {name_b} has shape {b.shape}")


def check_batched(x: tf.Tensor, name: str, min_rank: int = 2) -> None:
    if x.shape.rank is None or x.shape.rank < min_rank:
        raise ValueError(f"{name} must have shape [B, ...] with rank >= {min_rank}, got {x.shape}")


def seed_tensor(seed: object, name: str = "seed") -> tf.Tensor:
    """A stateless-RNG seed: an int or a shape-[2] integer tensor, returned as int64 [2]."""
    if isinstance(seed, bool) or seed is None:
        raise TypeError(f"{name} must be an int or a shape-[2] integer tensor, got {seed!r}")
    if isinstance(seed, int):
        return tf.constant([seed & 0x7FFFFFFF, seed >> 31], dtype=tf.int64)
    seed = tf.convert_to_tensor(seed)
    if not seed.dtype.is_integer or seed.shape != (2,):
        raise TypeError(f"{name} must be an int or a shape-[2] integer tensor, got {seed!r}")
    return tf.cast(seed, tf.int64)


def expand_to_rank(v: tf.Tensor, rank: int) -> tf.Tensor:
    """[B] -> [B, 1, ..., 1] with `rank` dimensions, for broadcasting over an example."""
    return tf.reshape(v, tf.concat([tf.shape(v), tf.ones([rank - 1], tf.int32)], axis=0))


def call_network(fn, x: tf.Tensor, *args, name: str = "score_fn output") -> tf.Tensor:
    """fn(x, *args) checked to be floating and shaped like x, cast to x's dtype."""
    out = tf.cast(as_float_tensor(fn(x, *args), name), x.dtype)
    check_same_shape(out, x, name, "x")
    return out


def positive_int(value: object, name: str) -> int:
    """A positive integer (bools refused), else ValueError naming the argument."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def positive_number(value: object, name: str) -> float:
    """A positive finite number, else ValueError naming the argument."""
    if not (isinstance(value, int | float | np.floating) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def noise_levels(sigmas) -> np.ndarray:
    """Noise levels as float64 [L]: non-empty, 1-D, positive and finite."""
    sigmas = np.asarray(sigmas, dtype=np.float64)
    if (
        sigmas.ndim != 1
        or sigmas.size == 0
        or not np.all(np.isfinite(sigmas))
        or np.any(sigmas <= 0)
    ):
        raise ValueError("sigmas must be a non-empty 1-D sequence of positive finite numbers")
    return sigmas
