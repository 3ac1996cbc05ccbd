"""Training objectives: the math core's losses bound to a network and to a training step.

Each takes the local batch x [b, ...] of one replica, the step's seed, and where the local
batch sits in the global one (`offset`, `global_batch`). Randomness (timesteps, noise, levels)
is drawn for the whole global batch from the step's seed and sliced, so every example gets the
same noise however many replicas share the batch: results do not depend on the replica count.
(Dropout masks and the sliced objective's projections are drawn per replica and do.)

Each declares the family of samplers its network serves (`family`, as in the sampler registry):
"diffusion" objectives carry the `diffusion` (a GaussianDiffusion) their sampler needs, "score"
objectives the noise levels `sigmas` [L] (decreasing) their network is conditioned on: NCSN's
schedule, or the single level a DSM or SSM network was trained at.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import tensorflow as tf

from diffusion_lib.diffusion import GaussianDiffusion
from diffusion_lib.schedules import beta_schedule, sigma_schedule
from diffusion_lib.score_matching import (
    denoising_score_matching_loss,
    ncsn_loss,
    sliced_score_matching_loss,
)

if TYPE_CHECKING:  # only a type here: the config imports OBJECTIVES to validate names
    from diffusion_lib.training.config import TrainConfig


def _split(seed: tf.Tensor, n: int) -> list[tf.Tensor]:
    return tf.unstack(tf.random.experimental.stateless_split(seed, num=n))


def _global_normal(x: tf.Tensor, seed, offset, global_batch) -> tf.Tensor:
    shape = tf.concat([[global_batch], tf.shape(x)[1:]], axis=0)
    return tf.random.stateless_normal(shape, seed, dtype=x.dtype)[offset : offset + tf.shape(x)[0]]


@dataclasses.dataclass
class DdpmObjective:
    config: TrainConfig
    family: ClassVar[str] = "diffusion"

    def __post_init__(self):
        c = self.config
        self.diffusion = GaussianDiffusion(
            beta_schedule(c.schedule, c.num_timesteps, c.beta_start, c.beta_end),
            model_mean_type=c.mean_type,
            model_var_type=c.var_type,
            loss_type=c.loss_type,
            loss_weighting=c.loss_weighting,
            min_snr_gamma=c.min_snr_gamma,
        )

    def network_overrides(self) -> dict:
        return {
            "conditioning": "timestep",
            "output_channels_factor": 2 if self.config.var_type == "learned_range" else 1,
        }

    def losses(self, model, x, seed, offset, global_batch) -> tf.Tensor:
        t_seed, noise_seed, dropout_seed = _split(seed, 3)
        t = self.diffusion.sample_timesteps(global_batch, t_seed, antithetic=self.config.antithetic)
        t = t[offset : offset + tf.shape(x)[0]]
        noise = _global_normal(x, noise_seed, offset, global_batch)
        drop = tf.random.experimental.stateless_fold_in(dropout_seed, offset)

        def net(x_t, timesteps):
            return model(x_t, timesteps, training=True, seed=drop)

        return self.diffusion.training_losses(net, x, t, noise).loss


@dataclasses.dataclass
class NcsnObjective:
    config: TrainConfig
    family: ClassVar[str] = "score"

    def __post_init__(self):
        c = self.config
        self.sigmas = sigma_schedule(c.sigma_max, c.sigma_min, c.num_levels)

    def network_overrides(self) -> dict:
        return {
            "conditioning": "log_sigma",
            "output_scaling": self.config.score_output_scaling,
            "input_scaling": self.config.score_input_scaling,
        }

    def losses(self, model, x, seed, offset, global_batch) -> tf.Tensor:
        level_seed, noise_seed, dropout_seed = _split(seed, 3)
        levels = tf.random.stateless_uniform(
            [global_batch], level_seed, 0, self.sigmas.size, dtype=tf.int32
        )
        levels = levels[offset : offset + tf.shape(x)[0]]
        noise = _global_normal(x, noise_seed, offset, global_batch)
        drop = tf.random.experimental.stateless_fold_in(dropout_seed, offset)
        return ncsn_loss(
            lambda v, s: model(v, s, training=True, seed=drop),
            x,
            self.sigmas,
            levels=levels,
            noise=noise,
        )


@dataclasses.dataclass
class DsmObjective:
    config: TrainConfig
    family: ClassVar[str] = "score"

    def __post_init__(self):
        self.sigmas = np.array([self.config.sigma], np.float64)

    def network_overrides(self) -> dict:
        return {
            "conditioning": "log_sigma",
            "output_scaling": self.config.score_output_scaling,
            "input_scaling": self.config.score_input_scaling,
        }

    def losses(self, model, x, seed, offset, global_batch) -> tf.Tensor:
        noise_seed, dropout_seed = _split(seed, 2)
        noise = _global_normal(x, noise_seed, offset, global_batch)
        sigma = tf.fill([tf.shape(x)[0]], tf.constant(self.config.sigma, x.dtype))
        drop = tf.random.experimental.stateless_fold_in(dropout_seed, offset)
        return denoising_score_matching_loss(
            lambda v: model(v, sigma, training=True, seed=drop), x, self.config.sigma, noise=noise
        )


@dataclasses.dataclass
class SsmObjective:
    """Sliced score matching of the data score; the network's condition is a constant sigma_min."""

    config: TrainConfig
    family: ClassVar[str] = "score"

    def __post_init__(self):
        self.sigmas = np.array([self.config.sigma_min], np.float64)

    def network_overrides(self) -> dict:
        return {"conditioning": "log_sigma", "output_scaling": "none"}

    def losses(self, model, x, seed, offset, global_batch) -> tf.Tensor:
        local = tf.random.experimental.stateless_fold_in(seed, offset)
        sigma = tf.fill(
            [tf.shape(x)[0] * self.config.num_projections],
            tf.constant(self.config.sigma_min, x.dtype),
        )
        return sliced_score_matching_loss(
            lambda v: model(v, sigma[: tf.shape(v)[0]], training=True, seed=local),
            x,
            self.config.num_projections,
            seed=local,
            projection=self.config.projection,
            variance_reduction=self.config.variance_reduction,
        )


OBJECTIVES = {
    "ddpm": DdpmObjective,
    "ncsn": NcsnObjective,
    "dsm": DsmObjective,
    "ssm": SsmObjective,
}


def build_objective(config: TrainConfig):
    return OBJECTIVES[config.objective](config)


__all__ = ["OBJECTIVES", "build_objective"]
