"""Sampling with part of each sample given: inpainting (pixels) and imputation (coordinates).

A sampler's chain visits positions p = 0..N (p = 0 the starting noise, p = N the samples), and
at each the state is distributed, under the forward process, as

    x_p = alpha_p x_0 + std_p z                                       (the chain's marginals)

(DDPM: alpha = sqrt(abar_t), std = sqrt(1 - abar_t); NCSN and the VE SDE: alpha = 1, std =
sigma; the VP SDE: its alpha(t), std(t); alpha = 1, std = 0 where a chain lands on the data).

The replacement method (Song et al. 2021, sec. 5 and appendix I): after every step, the known
entries of x are replaced by a fresh draw of their own marginal at the position reached,
alpha_p x_0 + std_p z, and the chain fills in the rest. It is exact when the known and unknown
entries are independent; where they are correlated, the unknown part only sees the known part
through the noisy state and lags behind it (the "disharmony" RePaint names).

Resampling (Lugmayr et al. 2022, RePaint): after every `jump_length` steps down, the chain is
noised back up `jump_length` positions by the forward process and walks down again, each block
`resamplings` times in all (1: the replacement method alone). Going up from position b to the
noisier position a draws x_a ~ N((alpha_a / alpha_b) x_b, (std_a^2 - (alpha_a / alpha_b)^2
std_b^2) I), the forward transition of every process here. The walks down harmonise the unknown
part with the known one; a block's steps cost `resamplings` times the network calls.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class Known:
    """What is given of every sample, in the sampler's (model) units: `values` [B, ...] where
    `mask` (broadcastable to [B, ...], 1 given, 0 to draw) is 1. `resamplings` walks of each
    block of `jump_length` steps (1: the replacement method alone)."""

    values: tf.Tensor
    mask: tf.Tensor
    jump_length: int = 10
    resamplings: int = 1

    def __post_init__(self):
        for name in ("jump_length", "resamplings"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"{name} must be an integer of at least 1, got {value!r}")
        mask = np.asarray(self.mask)
        if not np.all((mask == 0) | (mask == 1)):
            raise ValueError("mask must hold only 0 (to draw) and 1 (given)")
        values = tf.convert_to_tensor(self.values)
        if not values.dtype.is_floating:
            raise TypeError(f"values must be floating point (model units), got {values.dtype}")
        if not np.all(np.isfinite(values.numpy())):
            raise ValueError("values must be finite")
        try:
            np.broadcast_shapes(mask.shape, tuple(values.shape))
        except ValueError:
            raise ValueError(
                f"mask of shape {mask.shape} does not fit values of shape {tuple(values.shape)}"
            ) from None

    def check_fits(self, shape) -> None:
        """Raises ValueError unless values are of the chain's `shape` and the mask fits it."""
        shape = tuple(int(s) for s in shape)
        if tuple(self.values.shape) != shape:
            raise ValueError(
                f"the known values are of shape {tuple(self.values.shape)}; the samples are {shape}"
            )
        if np.broadcast_shapes(np.shape(self.mask), shape) != shape:
            raise ValueError(f"mask of shape {np.shape(self.mask)} does not fit samples {shape}")


def paste(samples: tf.Tensor, known: Known | None) -> tf.Tensor:
    """`samples` with the known entries exactly as given (a chain that ends above the data, or
    denoises after its last step, leaves them near their values, not at them)."""
    if known is None:
        return samples
    mask = tf.broadcast_to(tf.cast(known.mask, samples.dtype), tf.shape(samples))
    return tf.where(mask > 0.5, tf.cast(known.values, samples.dtype), samples)


@dataclasses.dataclass(frozen=True)
class Move:
    """One move of a chain with given entries: `down` runs sampler step `step` (from position
    `step` to `step + 1`); otherwise the state is noised up from position `start` to `end`
    (end < start). `visit` counts earlier moves of the same kind from the same place."""

    down: bool
    step: int = 0
    start: int = 0
    end: int = 0
    visit: int = 0


def resampling_schedule(num_steps: int, jump_length: int, resamplings: int) -> list[Move]:
    """RePaint's schedule on a chain of `num_steps` steps: down from position 0; at every
    position p = N, N - j, N - 2j, ... > j - 1 (j = jump_length, counted from the end as
    RePaint counts its timesteps from 0), once reached, jump back up to p - j and walk down
    again, resamplings - 1 times. With resamplings = 1, the plain chain."""
    jumps = {
        p: resamplings - 1
        for p in range(num_steps, jump_length - 1, -jump_length)
        if p - jump_length >= 0
    }
    visits: dict[tuple[bool, int], int] = {}
    moves: list[Move] = []
    p = 0
    while p < num_steps or jumps.get(p, 0) > 0:
        if jumps.get(p, 0) > 0:
            jumps[p] -= 1
            visit = visits.get((False, p), 0)
            visits[(False, p)] = visit + 1
            moves.append(Move(False, start=p, end=p - jump_length, visit=visit))
            p -= jump_length
            continue
        visit = visits.get((True, p), 0)
        visits[(True, p)] = visit + 1
        moves.append(Move(True, step=p, visit=visit))
        p += 1
    return moves


def check_marginals(marginals, num_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(alpha, std), float64 [num_steps + 1] each, alpha > 0 and std >= 0."""
    alpha, std = (np.asarray(v, np.float64) for v in marginals)
    if alpha.shape != (num_steps + 1,) or std.shape != (num_steps + 1,):
        raise ValueError(
            f"marginals must give alpha and std at each of the {num_steps + 1} chain positions"
        )
    if np.any(alpha <= 0) or np.any(std < 0) or not np.all(np.isfinite([alpha, std])):
        raise ValueError("marginals need alpha > 0 and std >= 0, finite")
    return alpha, std
