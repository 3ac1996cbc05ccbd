"""Training objectives: the math core's losses bound to a network and to a training step.

Each takes the local batch x [b, ...] of one replica (and its labels [b] when the run is
class-conditional), the step's seed, and where the local batch sits in the global one
(`offset`, `global_batch`). Randomness (timesteps, noise, levels)
is drawn for the whole global batch from the step's seed and sliced, so every example gets the
same noise however many replicas share the batch: results do not depend on the replica count.
(Dropout masks and the sliced objective's projections are drawn per replica and do.)

Each declares the family of samplers its network serves (`family`, as in the sampler registry):
"diffusion" objectives carry the `diffusion` (a GaussianDiffusion) their sampler needs, "score"
objectives the noise levels `sigmas` [L] (decreasing) their network is conditioned on: NCSN's
schedule, or the single level a DSM or SSM network was trained at; the "sde" objectives (score
SDEs and EDM, whose denoiser is a score model of a VE SDE) their `sde`.
Objectives whose network is exactly a score model of an SDE also serve the "sde" samplers:
`sde_view(model)` returns (sde, score_fn) or raises ValueError saying why it cannot (DDPM: a
linear beta schedule is VP's discretisation; NCSN: geometric levels are VE's).

Each also says what noise its network's condition stands for: `noise_level(cond)` is the noise
standard deviation sigma, in model units as a variance-exploding process counts it, of the
input a network called with `cond` [B] expects (NCSN: cond itself; a DDPM timestep i:
sqrt((1 - abar_i) / abar_i); a VP SDE's 999 t: std(t) / alpha(t)). Guidance limited to an
interval of noise levels reads it.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np
import tensorflow as tf

from diffusion_lib import edm
from diffusion_lib._checks import expand_to_rank
from diffusion_lib.diffusion import GaussianDiffusion
from diffusion_lib.schedules import beta_schedule, level_log_probs, sigma_schedule
from diffusion_lib.score_matching import (
    denoising_score_matching_loss,
    ncsn_loss,
    sliced_score_matching_loss,
)
from diffusion_lib.sde import (
    VESDE,
    make_sde,
    score_from_diffusion_model,
    score_from_sigma_model,
    ve_sde_of,
    vp_sde_of,
)
from diffusion_lib.training.config import TrainConfig


def _split(seed: tf.Tensor, n: int) -> list[tf.Tensor]:
    return tf.unstack(tf.random.experimental.stateless_split(seed, num=n))


def _level_sampler(config: TrainConfig, sigmas, uniform):
    """draw(global_batch, seed) -> level indices [global_batch] int32 by `config.model.noise_sampling`
    over the levels with noise stds `sigmas`: for "uniform" the objective's own `uniform` draw
    (as it always was, so its runs stay bit-identical)."""
    if config.model.noise_sampling == "uniform":
        return uniform
    logits = tf.constant(
        level_log_probs(
            sigmas,
            config.model.noise_sampling,
            config.model.noise_log_mean,
            config.model.noise_log_std,
        )[None],
        tf.float32,
    )

    def draw(global_batch, seed):
        return tf.random.stateless_categorical(logits, global_batch, seed, dtype=tf.int32)[0]

    return draw


def _global_normal(x: tf.Tensor, seed, offset, global_batch) -> tf.Tensor:
    shape = tf.concat([[global_batch], tf.shape(x)[1:]], axis=0)
    return tf.random.stateless_normal(shape, seed, dtype=x.dtype)[offset : offset + tf.shape(x)[0]]


def _replica_draws(draw_levels, x: tf.Tensor, seed, offset, global_batch):
    """This replica's rows of the global batch's draws: its noise levels (from `draw_levels`), its
    Gaussian noise, and its dropout seed. Drawn for the global batch and sliced, so a step does
    not depend on the replica count."""
    level_seed, noise_seed, dropout_seed = _split(seed, 3)
    levels = draw_levels(global_batch, level_seed)[offset : offset + tf.shape(x)[0]]
    noise = _global_normal(x, noise_seed, offset, global_batch)
    return levels, noise, tf.random.experimental.stateless_fold_in(dropout_seed, offset)


def _replica_labels(config: TrainConfig, labels, seed, offset, global_batch):
    """The network's keywords for this replica's labels: {"labels": [b]}, each replaced by the
    null label K = num_classes with probability `label_dropout` (drawn for the global batch from
    a stream of its own, so an unconditional run's draws are untouched); {} when the run is not
    class-conditional (its network is called as it always was)."""
    if not config.network.num_classes:
        return {}
    if labels is None:
        raise ValueError("a class-conditional objective needs the batch's labels")
    labels = tf.cast(labels, tf.int32)
    local = tf.shape(labels)[0]
    drop_seed = tf.random.experimental.stateless_fold_in(seed, 0x1ABE1)
    dropped = tf.random.stateless_uniform([global_batch], drop_seed)[offset : offset + local]
    return {
        "labels": tf.where(
            dropped < config.network.label_dropout, config.network.num_classes, labels
        )
    }


@dataclasses.dataclass
class DdpmObjective:
    config: TrainConfig
    family: ClassVar[str] = "diffusion"

    def __post_init__(self):
        c = self.config
        self.diffusion = GaussianDiffusion(
            beta_schedule(
                c.model.schedule, c.model.num_timesteps, c.model.beta_start, c.model.beta_end
            ),
            model_mean_type=c.model.mean_type,
            model_var_type=c.model.var_type,
            loss_type=c.model.loss_type,
            loss_weighting=c.model.loss_weighting,
            min_snr_gamma=c.model.min_snr_gamma,
        )
        abar = self.diffusion.alphas_cumprod
        self._level_sigmas = np.sqrt((1.0 - abar) / abar)
        self._draw_levels = _level_sampler(
            c,
            self._level_sigmas,
            lambda n, seed: self.diffusion.sample_timesteps(n, seed, antithetic=c.model.antithetic),
        )

    def network_overrides(self) -> dict:
        return {
            "conditioning": "timestep",
            "output_channels_factor": 2 if self.config.model.var_type == "learned_range" else 1,
        }

    def losses(self, model, x, seed, offset, global_batch, labels=None) -> tf.Tensor:
        t, noise, drop = _replica_draws(self._draw_levels, x, seed, offset, global_batch)
        conditions = _replica_labels(self.config, labels, seed, offset, global_batch)

        def net(x_t, timesteps):
            return model(x_t, timesteps, training=True, seed=drop, **conditions)

        return self.diffusion.training_losses(net, x, t, noise).loss

    def noise_level(self, cond) -> tf.Tensor:
        last = self._level_sigmas.size - 1
        level = tf.clip_by_value(tf.cast(tf.round(tf.cast(cond, tf.float32)), tf.int32), 0, last)
        return tf.gather(tf.constant(self._level_sigmas, tf.float32), level)

    def sde_view(self, model):
        sde = vp_sde_of(self.diffusion)
        return sde, score_from_diffusion_model(model, self.diffusion, sde)


class _ConditionedOnSigma:
    """A network whose condition is its noise level sigma itself."""

    def noise_level(self, cond) -> tf.Tensor:
        return tf.cast(cond, tf.float32)


class _SigmaConditionedScore(_ConditionedOnSigma):
    """The network of NCSN and DSM: conditioned on log sigma, scaled as the config says."""

    config: TrainConfig
    family: ClassVar[str] = "score"

    def network_overrides(self) -> dict:
        return {
            "conditioning": "log_sigma",
            "output_scaling": self.config.model.score_output_scaling,
            "input_scaling": self.config.model.score_input_scaling,
        }


@dataclasses.dataclass
class NcsnObjective(_SigmaConditionedScore):
    config: TrainConfig

    def __post_init__(self):
        c = self.config
        self.sigmas = sigma_schedule(c.model.sigma_max, c.model.sigma_min, c.model.num_levels)
        self._draw_levels = _level_sampler(
            c,
            self.sigmas,
            lambda n, seed: tf.random.stateless_uniform(
                [n], seed, 0, self.sigmas.size, dtype=tf.int32
            ),
        )

    def losses(self, model, x, seed, offset, global_batch, labels=None) -> tf.Tensor:
        levels, noise, drop = _replica_draws(self._draw_levels, x, seed, offset, global_batch)
        conditions = _replica_labels(self.config, labels, seed, offset, global_batch)
        return ncsn_loss(
            lambda v, s: model(v, s, training=True, seed=drop, **conditions),
            x,
            self.sigmas,
            levels=levels,
            noise=noise,
        )

    def sde_view(self, model):
        sde = ve_sde_of(self.sigmas)
        return sde, score_from_sigma_model(model, sde)


@dataclasses.dataclass
class DsmObjective(_SigmaConditionedScore):
    config: TrainConfig

    def __post_init__(self):
        self.sigmas = np.array([self.config.model.sigma], np.float64)

    def losses(self, model, x, seed, offset, global_batch, labels=None) -> tf.Tensor:
        noise_seed, dropout_seed = _split(seed, 2)
        noise = _global_normal(x, noise_seed, offset, global_batch)
        sigma = tf.fill([tf.shape(x)[0]], tf.constant(self.config.model.sigma, x.dtype))
        drop = tf.random.experimental.stateless_fold_in(dropout_seed, offset)
        return denoising_score_matching_loss(
            lambda v: model(v, sigma, training=True, seed=drop),
            x,
            self.config.model.sigma,
            noise=noise,
        )


@dataclasses.dataclass
class SsmObjective(_ConditionedOnSigma):
    """Sliced score matching of the data score; the network's condition is a constant sigma_min."""

    config: TrainConfig
    family: ClassVar[str] = "score"

    def __post_init__(self):
        self.sigmas = np.array([self.config.model.sigma_min], np.float64)

    def network_overrides(self) -> dict:
        return {"conditioning": "log_sigma", "output_scaling": "none"}

    def losses(self, model, x, seed, offset, global_batch, labels=None) -> tf.Tensor:
        local = tf.random.experimental.stateless_fold_in(seed, offset)
        sigma = tf.fill(
            [tf.shape(x)[0] * self.config.model.num_projections],
            tf.constant(self.config.model.sigma_min, x.dtype),
        )
        return sliced_score_matching_loss(
            lambda v: model(v, sigma[: tf.shape(v)[0]], training=True, seed=local),
            x,
            self.config.model.num_projections,
            seed=local,
            projection=self.config.model.projection,
            variance_reduction=self.config.model.variance_reduction,
        )


# VP-type networks are conditioned on t scaled to DDPM's timestep range (score_sde's convention),
# so the timestep embedding sees the values it was designed for.
TIME_SCALE = 999.0


@dataclasses.dataclass
class SdeObjective:
    """Denoising score matching over continuous time (Song et al. 2021, eq. 7): t ~ U(eps, 1),
    x_t = alpha(t) x + std(t) z, and the per-example loss

        mean over dims of lambda(t) (s(x_t, t) + z / std(t))^2,  lambda = std^2 (or g^2 with
        likelihood weighting),

    with the network read as a score: VP / sub-VP networks predict the noise (s = -out / std,
    conditioned on 999 t); VE networks are NCSN's (conditioned on sigma(t), output / sigma)."""

    config: TrainConfig
    family: ClassVar[str] = "sde"

    def __post_init__(self):
        c = self.config
        if c.model.sde == "ve":
            params = {"sigma_min": c.model.sigma_min, "sigma_max": c.model.sigma_max}
        else:
            params = {"beta_min": c.model.beta_min, "beta_max": c.model.beta_max}
        self.sde = make_sde(c.model.sde, num_steps=c.model.num_timesteps, **params)

    def network_overrides(self) -> dict:
        if isinstance(self.sde, VESDE):
            return {"conditioning": "log_sigma", "output_scaling": "inverse_sigma"}
        return {"conditioning": "timestep", "output_channels_factor": 1}

    def score_fn(self, model, **call):
        """score_fn(x, t) of the network (`call`: training / seed keywords of the model)."""
        ve = isinstance(self.sde, VESDE)

        def score(x, t):
            _, std = self.sde.marginal(t, x.dtype)
            if ve:
                return model(x, std, **call)
            out = tf.cast(model(x, TIME_SCALE * tf.cast(t, tf.float32), **call), x.dtype)
            return -out / expand_to_rank(std, x.shape.rank)

        return score

    def noise_level(self, cond) -> tf.Tensor:
        cond = tf.cast(cond, tf.float32)
        if isinstance(self.sde, VESDE):
            return cond
        alpha, std = self.sde.marginal(cond / TIME_SCALE, tf.float32)
        return std / alpha

    def sde_view(self, model):
        return self.sde, self.score_fn(model)

    def losses(self, model, x, seed, offset, global_batch, labels=None) -> tf.Tensor:
        eps = self.config.model.sde_eps
        t, noise, drop = _replica_draws(
            lambda n, t_seed: tf.random.stateless_uniform([n], t_seed, eps, 1.0, dtype=tf.float64),
            x,
            seed,
            offset,
            global_batch,
        )
        x_t = self.sde.perturb(x, t, noise)
        conditions = _replica_labels(self.config, labels, seed, offset, global_batch)
        score = self.score_fn(model, training=True, seed=drop, **conditions)(
            x_t, tf.cast(t, x.dtype)
        )
        _, std = self.sde.marginal(t, x.dtype)
        std = expand_to_rank(std, x.shape.rank)
        if self.config.model.likelihood_weighting:
            g2 = expand_to_rank(tf.square(self.sde.diffusion(t, x.dtype)), x.shape.rank)
            per_element = g2 * tf.square(score + noise / std)
        else:
            per_element = tf.square(std * score + noise)
        return tf.reduce_mean(tf.reshape(per_element, [tf.shape(x)[0], -1]), axis=1)


@dataclasses.dataclass
class EdmObjective(_ConditionedOnSigma):
    """EDM (`diffusion_lib.edm`): the network F is preconditioned into the denoiser D(x; sigma)
    and trained at ln sigma ~ N(noise_log_mean, noise_log_std^2) with EDM's loss weight. Its
    condition is sigma itself, embedded as c_noise = ln(sigma) / 4. D is a score model of the
    VE SDE x = y + sigma(t) z over [sigma_min, sigma_max], which every "sde" sampler draws from
    (Heun's and Euler's read D back from that score)."""

    config: TrainConfig
    family: ClassVar[str] = "sde"

    def __post_init__(self):
        c = self.config.model
        self.sde = VESDE(c.sigma_min, c.sigma_max, num_steps=1000)

    def network_overrides(self) -> dict:
        return {"conditioning": "c_noise", "output_scaling": "none", "input_scaling": "none"}

    def denoiser(self, model, **call):
        """D(x, sigma [B]) of the network (`call`: its training / seed / labels keywords)."""
        return edm.denoiser(lambda v, s: model(v, s, **call), self.config.model.sigma_data)

    def score_fn(self, model, **call):
        """score_fn(x, t): (D(x; sigma(t)) - x) / sigma(t)^2."""
        denoise = self.denoiser(model, **call)

        def score(x, t):
            _, std = self.sde.marginal(t, x.dtype)
            return edm.score_of(denoise, x, std)

        return score

    def sde_view(self, model):
        return self.sde, self.score_fn(model)

    def losses(self, model, x, seed, offset, global_batch, labels=None) -> tf.Tensor:
        c = self.config.model

        def draw_sigmas(n, sigma_seed):
            log_sigma = tf.random.stateless_normal([n], sigma_seed, dtype=tf.float32)
            return tf.exp(c.noise_log_mean + c.noise_log_std * log_sigma)

        sigma, noise, drop = _replica_draws(draw_sigmas, x, seed, offset, global_batch)
        conditions = _replica_labels(self.config, labels, seed, offset, global_batch)
        denoise = self.denoiser(model, training=True, seed=drop, **conditions)
        return edm.denoiser_loss(denoise, x, sigma, noise, c.sigma_data)


OBJECTIVES = {
    "ddpm": DdpmObjective,
    "ncsn": NcsnObjective,
    "dsm": DsmObjective,
    "ssm": SsmObjective,
    "sde": SdeObjective,
    "edm": EdmObjective,
}


def build_objective(config: TrainConfig):
    return OBJECTIVES[config.objective](config)


__all__ = ["OBJECTIVES", "build_objective"]
