"""Seeded weight initialisation: the same config and seed give the same initial weights.

Keras draws initial weights from a process-global seed, so two models built from one config
differ, and a run and its replay start from different points. `initialize(model, seed)`
redraws every non-constant weight from a generator seeded by (seed, weight index) with Keras's
default Glorot-uniform law (limit sqrt(6 / (fan_in + fan_out))); zero-initialised kernels and
constant weights (biases, GroupNorm's gamma and beta) keep their values.
"""

from __future__ import annotations

import math

import keras
import numpy as np


def _fans(shape: tuple[int, ...]) -> tuple[float, float]:
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive = math.prod(shape[:-2]) if len(shape) > 2 else 1
    return shape[-2] * receptive, shape[-1] * receptive


def initialize(model: keras.Model, seed: int) -> keras.Model:
    for index, weight in enumerate(model.weights):
        values = weight.numpy()
        if values.size == 0 or np.all(values == values.flat[0]):
            continue  # zeros, ones: deliberate constants
        fan_in, fan_out = _fans(tuple(weight.shape))
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        rng = np.random.default_rng([seed, index])
        weight.assign(rng.uniform(-limit, limit, size=weight.shape).astype(values.dtype))
    return model
