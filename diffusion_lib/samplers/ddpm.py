"""Ancestral sampling of a DDPM (Ho et al. 2020, Alg. 2 / eq. 11).

    x_T ~ N(0, I);  x_{t-1} = mu_theta(x_t, t) + sigma_t z,  z ~ N(0, I) for t > 0, z = 0 at t = 0

with mu_theta and sigma_t^2 from `GaussianDiffusion.p_mean_variance` (its variance type decides
between beta~_t, beta_t and a learned variance).
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
    initial_state,
    register_sampler,
    run_chain,
    split_seed,
)
from diffusion_lib.samplers.known import Known


@register_sampler("ddpm", family="diffusion")
def ddpm_sample(
    model: Model,
    diffusion: GaussianDiffusion,
    shape: Sequence[int] | None = None,
    *,
    seed,
    noise: tf.Tensor | None = None,
    clip_x0: tuple[float, float] | None = None,
    frames: Frames = None,
    progress: Progress | None = None,
    strategy: tf.distribute.Strategy | None = None,
    dtype: tf.DType = tf.float32,
    known: Known | None = None,
) -> SampleResult:
    """Draws samples of `shape` [B, ...] (or from starting `noise` x_T) with all T steps.

    clip_x0: clip the predicted x_0 to this range at every step (e.g. (-1, 1) for images).
    frames: an int or chain steps (0 = x_T, T = samples) to return the trajectory, for GIFs.
    known: entries given in advance (`samplers.known`: inpainting), in model units.
    """
    init_seed, chain_seed = split_seed(seed)
    x = initial_state(noise, shape, init_seed, dtype, "noise")
    num_timesteps = diffusion.num_timesteps

    @tf.function(autograph=False)
    def step(x_t, i, step_seed):
        t = tf.fill([tf.shape(x_t)[0]], num_timesteps - 1 - i)
        out = diffusion.p_mean_variance(model, x_t, t, clip_x0=clip_x0)
        z = tf.random.stateless_normal(tf.shape(x_t), step_seed, dtype=x_t.dtype)
        # No noise on the last step (t = 0): the sample is the decoder's mean.
        keep = tf.cast(i < num_timesteps - 1, x_t.dtype)
        return out.mean + keep * tf.exp(0.5 * out.log_variance) * z

    # Position p holds x at timestep T - 1 - p; the last one is x_0.
    abar = np.append(diffusion.alphas_cumprod[::-1], 1.0)
    marginals = (np.sqrt(abar), np.sqrt(1.0 - abar))
    return run_chain(
        step,
        x,
        num_timesteps,
        chain_seed,
        frames,
        progress,
        strategy,
        known=known,
        marginals=marginals,
    )
