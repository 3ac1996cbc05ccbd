"""DDIM sampling (Song, Meng & Ermon 2020) on any increasing sub-sequence of timesteps.

For the sub-sequence tau_1 < ... < tau_S and a step from t = tau_i to s = tau_{i-1}
(abar_s = 1 past the first), with pred_x0 and pred_noise from the network (DDIM eq. 12):

    sigma  = eta * sqrt((1 - abar_s) / (1 - abar_t)) * sqrt(1 - abar_t / abar_s)     (eq. 16)
    x_s    = sqrt(abar_s) pred_x0 + sqrt(1 - abar_s - sigma^2) pred_noise + sigma z

eta = 0 is the deterministic DDIM; eta = 1 on all T steps gives sigma^2 = beta~_t, the DDPM
posterior variance, so it matches ancestral sampling with fixed_small variance in distribution.
The network always sees the original timestep indices it was trained on.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from diffusion_lib.diffusion import GaussianDiffusion, Model
from diffusion_lib.samplers.base import (
    Frames,
    Progress,
    SampleResult,
    Setting,
    initial_state,
    register_sampler,
    run_chain,
    split_seed,
)
from diffusion_lib.samplers.known import Known

SPACINGS = ("uniform", "quad")


def ddim_timesteps(num_timesteps: int, num_steps: int, spacing: str = "uniform") -> np.ndarray:
    """An increasing int sub-sequence of [0, T) of length `num_steps`, ending at T - 1.

    "uniform" spaces evenly; "quad" spaces evenly in sqrt(t), denser near the data (DDIM sec. D.2).
    """
    if spacing not in SPACINGS:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    if isinstance(num_steps, bool) or not isinstance(num_steps, int | np.integer):
        raise ValueError(f"num_steps must be an integer, got {num_steps!r}")
    if not 1 <= num_steps <= num_timesteps:
        raise ValueError(f"num_steps must be in [1, {num_timesteps}], got {num_steps}")
    if num_steps == 1:
        return np.array([num_timesteps - 1])
    if spacing == "uniform":
        steps = np.round(np.linspace(0, num_timesteps - 1, num_steps))
    else:
        steps = np.round(np.linspace(0, np.sqrt(num_timesteps - 1), num_steps) ** 2)
    steps = steps.astype(np.int64)
    # Rounding can collide at the dense end: push duplicates up, then back under T - 1, so the
    # sequence is strictly increasing (possible whenever num_steps <= T).
    for k in range(1, num_steps):
        steps[k] = max(steps[k], steps[k - 1] + 1)
    steps[-1] = min(steps[-1], num_timesteps - 1)
    for k in range(num_steps - 2, -1, -1):
        steps[k] = min(steps[k], steps[k + 1] - 1)
    return steps


@register_sampler(
    "ddim",
    family="diffusion",
    settings={
        "num_steps": Setting(50, low=1),
        "eta": Setting(0.0, low=0.0, high=1.0),
    },
)
def ddim_sample(
    model: Model,
    diffusion: GaussianDiffusion,
    shape: Sequence[int] | None = None,
    *,
    seed,
    num_steps: int | None,
    spacing: str = "uniform",
    eta: float,
    noise: tf.Tensor | None = None,
    clip_x0: tuple[float, float] | None = None,
    frames: Frames = None,
    progress: Progress | None = None,
    strategy: tf.distribute.Strategy | None = None,
    dtype: tf.DType = tf.float32,
    known: Known | None = None,
) -> SampleResult:
    """Draws samples of `shape` [B, ...] with DDIM.

    `num_steps` timesteps spaced by `spacing` (None: all T). eta in [0, 1] scales the noise
    (eq. 16). known: entries given in advance (`samplers.known`: inpainting), in model units.
    """
    if not 0.0 <= float(eta) <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    T = diffusion.num_timesteps
    seq = ddim_timesteps(T, T if num_steps is None else num_steps, spacing)

    # Per chain step i (running from the noisiest timestep down): t_i and abar at t_i and the next.
    t_desc = seq[::-1].copy()
    abar = diffusion.alphas_cumprod[t_desc]
    abar_next = np.append(diffusion.alphas_cumprod[t_desc[1:]], 1.0)
    sigma = float(eta) * np.sqrt((1.0 - abar_next) / (1.0 - abar)) * np.sqrt(1.0 - abar / abar_next)
    # float64 tables, cast once per step: the coefficients are differences of numbers near 1.
    t_table = tf.constant(t_desc, tf.int32)
    sqrt_abar_next = tf.constant(np.sqrt(abar_next), tf.float64)
    sigma_table = tf.constant(sigma, tf.float64)
    dir_table = tf.constant(np.sqrt(np.maximum(1.0 - abar_next - sigma**2, 0.0)), tf.float64)

    init_seed, chain_seed = split_seed(seed)
    x = initial_state(noise, shape, init_seed, dtype, "noise")

    @tf.function(autograph=False)
    def step(x_t, i, step_seed):
        t = tf.fill([tf.shape(x_t)[0]], t_table[i])
        pred_x0, pred_noise, _ = diffusion.model_predictions(model, x_t, t, clip_x0=clip_x0)
        dt = x_t.dtype
        mean = tf.cast(sqrt_abar_next[i], dt) * pred_x0 + tf.cast(dir_table[i], dt) * pred_noise
        z = tf.random.stateless_normal(tf.shape(x_t), step_seed, dtype=dt)
        return mean + tf.cast(sigma_table[i], dt) * z

    at = np.append(abar, 1.0)  # position p at timestep t_desc[p]; the last one is x_0
    marginals = (np.sqrt(at), np.sqrt(1.0 - at))
    return run_chain(
        step,
        x,
        len(t_desc),
        chain_seed,
        frames,
        progress,
        strategy,
        known=known,
        marginals=marginals,
    )
