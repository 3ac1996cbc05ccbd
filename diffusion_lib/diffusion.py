"""Discrete-time Gaussian diffusion (DDPM): forward process, reverse-process parameters, losses.

Notation (Ho et al. 2020, "DDPM"; Nichol & Dhariwal 2021, "IDDPM"). Timesteps are 0-based
integers t in [0, T); index t here is step t+1 of the papers.

    betas                           beta_t
    alphas_cumprod                  abar_t = prod_{s<=t} (1 - beta_s)
    alphas_cumprod_prev             abar_{t-1}, with abar_{-1} = 1
    q(x_t | x_0)                    N(sqrt(abar_t) x_0, (1 - abar_t) I)                      DDPM eq. 4
    posterior q(x_{t-1} | x_t, x_0) N(mu~_t, beta~_t I)                                      DDPM eqs. 6-7
        posterior_mean_coef1        beta_t sqrt(abar_{t-1}) / (1 - abar_t)
        posterior_mean_coef2        (1 - abar_{t-1}) sqrt(alpha_t) / (1 - abar_t)
        posterior_variance          beta~_t = beta_t (1 - abar_{t-1}) / (1 - abar_t)
        posterior_log_variance_clipped  log beta~_t with beta~_0 (= 0) replaced by beta~_1
    x_0 from eps                    x_0 = sqrt(1/abar_t) x_t - sqrt(1/abar_t - 1) eps        DDPM eq. 15
    v                               v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0              (Salimans & Ho 2022)

The network is an argument: any callable `model(x_t, t)` with x_t [B, ...] float and t [B] int32,
returning a tensor shaped like x_t (or with twice the channels, last axis, for learned variance).

Losses (per example, shape [B]):
    simple   mean over dimensions of ||target - model output||^2 with target eps, x_0 or v  DDPM eq. 14
    vlb      T * L_t in bits/dim, L_t the KL term (t > 0) or decoder NLL (t = 0)         DDPM eq. 5
    hybrid   simple + lambda * T * L_t, lambda = 0.001, with the mean's gradient stopped in
             the vlb term when the variance is learned                                  IDDPM sec. 3.1

The simple term may be weighted per timestep (`loss_weighting`): "min_snr" (Hang et al. 2023)
weighs every prediction type as min(SNR_t, gamma) times the x_0 error, SNR_t = abar_t / (1 - abar_t),
which for the eps target is the weight min(SNR_t, gamma) / SNR_t and for v min(SNR_t, gamma) /
(SNR_t + 1): the low-noise steps, which are easy and many, stop dominating the gradient.

Coefficients are computed in float64 and cast to the dtype of x_t when gathered.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Callable

import numpy as np
import tensorflow as tf
from numpy.typing import ArrayLike

from diffusion_lib import _checks
from diffusion_lib.likelihoods import discretized_gaussian_log_likelihood, normal_kl

Model = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]


class ModelMeanType(enum.StrEnum):
    """What the network predicts."""

    EPS = "eps"
    X0 = "x0"
    V = "v"


class ModelVarType(enum.StrEnum):
    """Reverse-process variance: fixed to beta~_t (small) or beta_t (large), or learned."""

    FIXED_SMALL = "fixed_small"
    FIXED_LARGE = "fixed_large"
    # IDDPM eq. 15: the network's second half of channels v in [-1, 1] interpolates
    # log variance between log beta~_t (v = -1) and log beta_t (v = 1).
    LEARNED_RANGE = "learned_range"


class LossType(enum.StrEnum):
    SIMPLE = "simple"
    VLB = "vlb"
    HYBRID = "hybrid"


class LossWeighting(enum.StrEnum):
    """Per-timestep weight of the simple term."""

    NONE = "none"
    MIN_SNR = "min_snr"


@dataclasses.dataclass(frozen=True)
class PMeanVariance:
    """Parameters of p(x_{t-1} | x_t), each [B, ...] like x_t."""

    mean: tf.Tensor
    variance: tf.Tensor
    log_variance: tf.Tensor
    pred_x0: tf.Tensor
    pred_noise: tf.Tensor


@dataclasses.dataclass(frozen=True)
class LossTerms:
    """Per-example training losses, each [B]. `vlb` is None for the simple loss."""

    loss: tf.Tensor
    mse: tf.Tensor | None
    vlb: tf.Tensor | None


@dataclasses.dataclass(frozen=True)
class BitsPerDim:
    """The variational bound of DDPM eq. 5, per example, in bits per dimension.

    total = prior + sum_t vb[:, t]; vb [B, T] holds L_{T-1}..L_0 indexed by t, prior [B] is
    KL(q(x_T | x_0) || N(0, I)); mse [B, T] is the eps-prediction error at each t.
    """

    total: tf.Tensor
    prior: tf.Tensor
    vb: tf.Tensor
    mse: tf.Tensor


def _mean_flat(x: tf.Tensor) -> tf.Tensor:
    """Mean over all but the batch axis: [B, ...] -> [B]."""
    return tf.reduce_mean(tf.reshape(x, [tf.shape(x)[0], -1]), axis=1)


class GaussianDiffusion:
    """Forward process, reverse-process parameters and training losses of a DDPM.

    Args:
      betas: float array [T] in (0, 1), e.g. from `schedules.beta_schedule`.
      model_mean_type: what the network predicts ("eps", "x0" or "v").
      model_var_type: "fixed_small" (beta~_t), "fixed_large" (beta_t, with beta~_1 at t = 0 as in
        DDPM's code) or "learned_range" (network outputs 2C channels).
      loss_type: "simple", "vlb" or "hybrid".
      hybrid_lambda: weight of the vlb term in the hybrid loss (IDDPM: 0.001).
      loss_weighting: "none" or "min_snr" (weights of the simple term, module docstring).
      min_snr_gamma: the clip of the SNR for "min_snr" (Hang et al.: 5).
      num_bins: quantisation levels of the data for the decoder NLL (256 for 8-bit images).
    """

    def __init__(
        self,
        betas: ArrayLike,
        model_mean_type: ModelMeanType | str = ModelMeanType.EPS,
        model_var_type: ModelVarType | str = ModelVarType.FIXED_SMALL,
        loss_type: LossType | str = LossType.SIMPLE,
        *,
        hybrid_lambda: float = 0.001,
        num_bins: int = 256,
        loss_weighting: LossWeighting | str = LossWeighting.NONE,
        min_snr_gamma: float = 5.0,
    ):
        self.model_mean_type = ModelMeanType(model_mean_type)
        self.model_var_type = ModelVarType(model_var_type)
        self.loss_type = LossType(loss_type)
        self.hybrid_lambda = float(hybrid_lambda)
        self.num_bins = int(num_bins)
        self.loss_weighting = LossWeighting(loss_weighting)
        self.min_snr_gamma = _checks.positive_number(min_snr_gamma, "min_snr_gamma")

        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or betas.size == 0:
            raise ValueError(f"betas must be a non-empty 1-D array, got shape {betas.shape}")
        if not np.all((betas > 0.0) & (betas < 1.0)):
            raise ValueError("betas must all lie in the open interval (0, 1)")
        self.num_timesteps = int(betas.shape[0])

        # float64 throughout: abar_t is a product of T factors and 1 - abar_t near t = 0 is a
        # difference of nearly equal numbers; float32 loses most of their digits.
        alphas = 1.0 - betas
        abar = np.cumprod(alphas)
        abar_prev = np.append(1.0, abar[:-1])
        self.betas = betas
        self.alphas_cumprod = abar
        self.alphas_cumprod_prev = abar_prev
        self.sqrt_alphas_cumprod = np.sqrt(abar)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - abar)
        self.log_one_minus_alphas_cumprod = np.log(1.0 - abar)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / abar)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / abar - 1.0)
        self.posterior_variance = betas * (1.0 - abar_prev) / (1.0 - abar)
        # beta~_0 = 0; its log is replaced by log beta~_1 (the t = 0 step is the decoder anyway).
        variance_floor = self.posterior_variance[1] if self.num_timesteps > 1 else betas[0]
        self.posterior_log_variance_clipped = np.log(
            np.append(variance_floor, self.posterior_variance[1:])
        )
        self.posterior_mean_coef1 = betas * np.sqrt(abar_prev) / (1.0 - abar)
        self.posterior_mean_coef2 = (1.0 - abar_prev) * np.sqrt(alphas) / (1.0 - abar)
        # fixed_large as in DDPM's code: beta_t, with beta~_1 at t = 0 for a sensible decoder.
        self.large_variance = np.append(variance_floor, betas[1:])
        self.mse_weight = self._mse_weights()

        self._tables: dict[str, tf.Tensor] = {}

    def _mse_weights(self) -> np.ndarray:
        """[T] weights of the simple term (all ones unless `loss_weighting` says otherwise)."""
        if self.loss_weighting == LossWeighting.NONE:
            return np.ones(self.num_timesteps)
        snr = self.alphas_cumprod / (1.0 - self.alphas_cumprod)
        clipped = np.minimum(snr, self.min_snr_gamma)
        per_target = {
            ModelMeanType.EPS: clipped / snr,
            ModelMeanType.X0: clipped,
            ModelMeanType.V: clipped / (snr + 1.0),
        }
        return per_target[self.model_mean_type]

    # ------------------------------------------------------------------ helpers

    def _extract(self, name: str, t: tf.Tensor, x: tf.Tensor) -> tf.Tensor:
        """Gathers coefficient table `name` at timesteps t [B] as [B, 1, ..., 1] in x's dtype."""
        table = self._tables.get(name)
        if table is None:
            with tf.init_scope():  # eager constant, usable from every tf.function that follows
                table = tf.constant(getattr(self, name), dtype=tf.float64)
            self._tables[name] = table
        values = tf.cast(tf.gather(table, t), x.dtype)
        return _checks.expand_to_rank(values, x.shape.rank)

    def _inputs(self, x: object, t: object, name: str = "x") -> tuple[tf.Tensor, tf.Tensor]:
        x = _checks.as_float_tensor(x, name)
        _checks.check_batched(x, name)
        t = _checks.check_timesteps(t, x, self.num_timesteps)
        return x, t

    def sample_timesteps(self, batch_size: int, seed, *, antithetic: bool = False) -> tf.Tensor:
        """Uniform timesteps [batch_size] int32 from a stateless seed.

        With `antithetic`, the second half mirrors the first (t' = T - 1 - t), which lowers the
        variance of the batch-mean loss (Kingma et al. 2021, "VDM", appendix I.2).
        """
        seed = _checks.seed_tensor(seed)
        if not antithetic:
            return tf.random.stateless_uniform(
                [batch_size], seed, minval=0, maxval=self.num_timesteps, dtype=tf.int32
            )
        half = (batch_size + 1) // 2
        first = tf.random.stateless_uniform(
            [half], seed, minval=0, maxval=self.num_timesteps, dtype=tf.int32
        )
        mirrored = self.num_timesteps - 1 - first
        return tf.concat([first, mirrored], axis=0)[:batch_size]

    # ------------------------------------------------------------ forward process

    def q_mean_variance(self, x0, t) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Mean, variance and log variance of q(x_t | x_0) (DDPM eq. 4), each [B, ...]."""
        x0, t = self._inputs(x0, t, "x0")
        mean = self._extract("sqrt_alphas_cumprod", t, x0) * x0
        variance = tf.broadcast_to(1.0 - self._extract("alphas_cumprod", t, x0), tf.shape(x0))
        log_variance = tf.broadcast_to(
            self._extract("log_one_minus_alphas_cumprod", t, x0), tf.shape(x0)
        )
        return mean, variance, log_variance

    def q_sample(self, x0, t, noise) -> tf.Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise (DDPM eq. 4), [B, ...]."""
        x0, t = self._inputs(x0, t, "x0")
        noise = _checks.as_float_tensor(noise, "noise")
        _checks.check_same_shape(noise, x0, "noise", "x0")
        return (
            self._extract("sqrt_alphas_cumprod", t, x0) * x0
            + self._extract("sqrt_one_minus_alphas_cumprod", t, x0) * noise
        )

    def q_posterior_mean_variance(self, x0, x_t, t) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Mean, variance and clipped log variance of q(x_{t-1} | x_t, x_0) (DDPM eqs. 6-7)."""
        x_t, t = self._inputs(x_t, t, "x_t")
        x0 = _checks.as_float_tensor(x0, "x0")
        _checks.check_same_shape(x0, x_t, "x0", "x_t")
        mean = (
            self._extract("posterior_mean_coef1", t, x_t) * x0
            + self._extract("posterior_mean_coef2", t, x_t) * x_t
        )
        variance = tf.broadcast_to(self._extract("posterior_variance", t, x_t), tf.shape(x_t))
        log_variance = tf.broadcast_to(
            self._extract("posterior_log_variance_clipped", t, x_t), tf.shape(x_t)
        )
        return mean, variance, log_variance

    # ---------------------------------------------------------- parametrisations

    def predict_x0_from_eps(self, x_t, t, eps) -> tf.Tensor:
        """DDPM eq. 15 rearranged: x_0 = sqrt(1/abar_t) x_t - sqrt(1/abar_t - 1) eps."""
        x_t, t = self._inputs(x_t, t, "x_t")
        return (
            self._extract("sqrt_recip_alphas_cumprod", t, x_t) * x_t
            - self._extract("sqrt_recipm1_alphas_cumprod", t, x_t) * eps
        )

    def predict_eps_from_x0(self, x_t, t, x0) -> tf.Tensor:
        x_t, t = self._inputs(x_t, t, "x_t")
        return (self._extract("sqrt_recip_alphas_cumprod", t, x_t) * x_t - x0) / self._extract(
            "sqrt_recipm1_alphas_cumprod", t, x_t
        )

    def predict_x0_from_v(self, x_t, t, v) -> tf.Tensor:
        """x_0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v."""
        x_t, t = self._inputs(x_t, t, "x_t")
        return (
            self._extract("sqrt_alphas_cumprod", t, x_t) * x_t
            - self._extract("sqrt_one_minus_alphas_cumprod", t, x_t) * v
        )

    def v_target(self, x0, t, noise) -> tf.Tensor:
        """v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0."""
        x0, t = self._inputs(x0, t, "x0")
        return (
            self._extract("sqrt_alphas_cumprod", t, x0) * noise
            - self._extract("sqrt_one_minus_alphas_cumprod", t, x0) * x0
        )

    def _split_output(
        self, output: tf.Tensor, x_t: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor | None]:
        """Checks the network output's shape and splits off the variance channels."""
        output = tf.cast(_checks.as_float_tensor(output, "model output"), x_t.dtype)
        if self.model_var_type == ModelVarType.LEARNED_RANGE:
            expected = x_t.shape[:-1].concatenate([2 * x_t.shape[-1]]) if x_t.shape[-1] else None
            if expected is not None and not output.shape.is_compatible_with(expected):
                raise ValueError(
                    f"model output has shape {output.shape}; learned_range variance needs {expected}"
                )
            mean_part, var_part = tf.split(output, 2, axis=-1)
            return mean_part, var_part
        _checks.check_same_shape(output, x_t, "model output", "x_t")
        return output, None

    def predict_x0_and_eps(
        self, mean_output: tf.Tensor, x_t: tf.Tensor, t: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """(pred_x0, pred_noise) from the mean part of a network output, for any mean type."""
        if self.model_mean_type == ModelMeanType.EPS:
            pred_noise = mean_output
            pred_x0 = self.predict_x0_from_eps(x_t, t, pred_noise)
        elif self.model_mean_type == ModelMeanType.X0:
            pred_x0 = mean_output
            pred_noise = self.predict_eps_from_x0(x_t, t, pred_x0)
        else:
            pred_x0 = self.predict_x0_from_v(x_t, t, mean_output)
            pred_noise = (
                self._extract("sqrt_one_minus_alphas_cumprod", t, x_t) * x_t
                + self._extract("sqrt_alphas_cumprod", t, x_t) * mean_output
            )
        return pred_x0, pred_noise

    def model_predictions(
        self, model: Model, x_t, t, *, clip_x0: tuple[float, float] | None = None
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor | None]:
        """Runs the network once: (pred_x0, pred_noise, variance channels or None).

        With `clip_x0`, pred_x0 is clipped to the range and pred_noise recomputed from it, so the
        two stay consistent (as DDIM's and IDDPM's samplers do).
        """
        x_t, t = self._inputs(x_t, t, "x_t")
        return self._predictions(model(x_t, t), x_t, t, clip_x0)

    def _predictions(
        self, model_output, x_t, t, clip_x0
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor | None]:
        """(pred_x0, pred_noise, variance channels or None) from a network output."""
        mean_output, var_output = self._split_output(model_output, x_t)
        pred_x0, pred_noise = self.predict_x0_and_eps(mean_output, x_t, t)
        if clip_x0 is not None:
            pred_x0 = tf.clip_by_value(pred_x0, clip_x0[0], clip_x0[1])
            pred_noise = self.predict_eps_from_x0(x_t, t, pred_x0)
        return pred_x0, pred_noise, var_output

    def _variance(self, var_output, x_t, t) -> tuple[tf.Tensor, tf.Tensor]:
        if self.model_var_type == ModelVarType.FIXED_SMALL:
            variance = self._extract("posterior_variance", t, x_t)
            log_variance = self._extract("posterior_log_variance_clipped", t, x_t)
        elif self.model_var_type == ModelVarType.FIXED_LARGE:
            variance = self._extract("large_variance", t, x_t)
            log_variance = tf.math.log(variance)
        else:
            min_log = self._extract("posterior_log_variance_clipped", t, x_t)
            max_log = tf.math.log(self._extract("betas", t, x_t))
            frac = (var_output + 1.0) / 2.0  # network's v in [-1, 1] -> [0, 1]
            log_variance = frac * max_log + (1.0 - frac) * min_log
            variance = tf.exp(log_variance)
        shape = tf.shape(x_t)
        return tf.broadcast_to(variance, shape), tf.broadcast_to(log_variance, shape)

    def p_mean_variance(
        self,
        model: Model,
        x_t,
        t,
        *,
        clip_x0: tuple[float, float] | None = None,
        model_output: tf.Tensor | None = None,
    ) -> PMeanVariance:
        """Parameters of p(x_{t-1} | x_t): mu = mu~_t(pred_x0, x_t) (DDPM eq. 7 with eq. 15).

        x_t [B, ...]; t [B] int. `model_output` skips the network call when already computed.
        """
        x_t, t = self._inputs(x_t, t, "x_t")
        if model_output is None:
            model_output = model(x_t, t)
        pred_x0, pred_noise, var_output = self._predictions(model_output, x_t, t, clip_x0)
        mean, _, _ = self.q_posterior_mean_variance(pred_x0, x_t, t)
        variance, log_variance = self._variance(var_output, x_t, t)
        return PMeanVariance(mean, variance, log_variance, pred_x0, pred_noise)

    # ------------------------------------------------------------------- losses

    def _vb_terms_bpd(self, model_output, x0, x_t, t, clip_x0=None) -> tf.Tensor:
        """L_t in bits/dim, [B]: KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) for t > 0 and the
        discretized decoder NLL -log p(x_0 | x_1) for t = 0 (DDPM eq. 5)."""
        true_mean, _, true_log_variance = self.q_posterior_mean_variance(x0, x_t, t)
        out = self.p_mean_variance(None, x_t, t, clip_x0=clip_x0, model_output=model_output)
        kl = _mean_flat(normal_kl(true_mean, true_log_variance, out.mean, out.log_variance))
        decoder_nll = -_mean_flat(
            discretized_gaussian_log_likelihood(
                x0, out.mean, 0.5 * out.log_variance, num_bins=self.num_bins
            )
        )
        return tf.where(tf.equal(t, 0), decoder_nll, kl) / math.log(2.0)

    def training_losses(self, model: Model, x0, t, noise) -> LossTerms:
        """Per-example losses [B] for data x0 [B, ...] at timesteps t [B] with noise like x0.

        The caller draws t (see `sample_timesteps`) and noise, so a training step is a pure
        function of its seed and resumes exactly.
        """
        x0, t = self._inputs(x0, t, "x0")
        x0 = _checks.check_finite(x0, "x0")
        noise = _checks.as_float_tensor(noise, "noise")
        _checks.check_same_shape(noise, x0, "noise", "x0")
        x_t = self.q_sample(x0, t, noise)
        model_output = tf.cast(model(x_t, t), x0.dtype)
        mean_output, var_output = self._split_output(model_output, x_t)

        vlb = None
        if self.loss_type in (LossType.VLB, LossType.HYBRID):
            if (
                self.model_var_type == ModelVarType.LEARNED_RANGE
                and self.loss_type == LossType.HYBRID
            ):
                # IDDPM sec. 3.1: the vlb term trains only the variance; the mean learns from L_simple.
                frozen = tf.concat([tf.stop_gradient(mean_output), var_output], axis=-1)
            else:
                frozen = model_output
            # T * L_t is an unbiased estimate of sum_t L_t for uniform t.
            vlb = self._vb_terms_bpd(frozen, x0, x_t, t) * float(self.num_timesteps)

        if self.loss_type == LossType.VLB:
            return LossTerms(loss=vlb, mse=None, vlb=vlb)

        if self.model_mean_type == ModelMeanType.EPS:
            target = noise
        elif self.model_mean_type == ModelMeanType.X0:
            target = x0
        else:
            target = self.v_target(x0, t, noise)
        mse = _mean_flat(tf.square(target - mean_output))
        if self.loss_weighting != LossWeighting.NONE:
            mse = mse * tf.reshape(self._extract("mse_weight", t, mse), [-1])
        if self.loss_type == LossType.SIMPLE:
            return LossTerms(loss=mse, mse=mse, vlb=None)
        return LossTerms(loss=mse + self.hybrid_lambda * vlb, mse=mse, vlb=vlb)

    def prior_bpd(self, x0) -> tf.Tensor:
        """KL(q(x_T | x_0) || N(0, I)) in bits/dim, [B]: the bound's term no network can change."""
        x0 = _checks.as_float_tensor(x0, "x0")
        _checks.check_batched(x0, "x0")
        t = tf.fill([tf.shape(x0)[0]], self.num_timesteps - 1)
        mean, _, log_variance = self.q_mean_variance(x0, t)
        zeros = tf.zeros_like(mean)
        return _mean_flat(normal_kl(mean, log_variance, zeros, zeros)) / math.log(2.0)

    def bits_per_dim(
        self, model: Model, x0, *, seed, clip_x0: tuple[float, float] | None = None
    ) -> BitsPerDim:
        """The full variational bound (DDPM eq. 5) over all T timesteps, in bits/dim (float64).

        One network call per timestep on the whole batch x0 [B, ...]; noise for each t comes from
        `seed`, so the estimate is reproducible. Data should be scaled to [-1, 1] on the grid of
        `num_bins` levels for the decoder term to be a probability.
        """
        x0 = _checks.check_finite(_checks.as_float_tensor(x0, "x0"), "x0")
        _checks.check_batched(x0, "x0")
        seed = _checks.seed_tensor(seed)
        model_dtype = x0.dtype
        # The bound sums T small KL terms, each a difference of nearly equal numbers: in float32
        # the sum drifts by ~0.1% with op order alone. The network runs in the data's dtype; the
        # bound's arithmetic runs in float64.
        x0 = tf.cast(x0, tf.float64)

        # One compiled step per timestep (traced once; t is a tensor): eager op dispatch would
        # otherwise dominate for small networks, ~36 ms per step.
        @tf.function(autograph=False)
        def terms_at(step):
            t = tf.fill([tf.shape(x0)[0]], step)
            noise = tf.random.stateless_normal(
                tf.shape(x0), tf.random.experimental.stateless_fold_in(seed, step), dtype=x0.dtype
            )
            x_t = self.q_sample(x0, t, noise)
            model_output = tf.cast(model(tf.cast(x_t, model_dtype), t), tf.float64)
            vb_t = self._vb_terms_bpd(model_output, x0, x_t, t, clip_x0=clip_x0)
            _, pred_noise, _ = self._predictions(model_output, x_t, t, None)
            return vb_t, _mean_flat(tf.square(pred_noise - noise))

        vb, mse = [], []
        for step in range(self.num_timesteps):
            vb_t, mse_t = terms_at(tf.constant(step, tf.int32))
            vb.append(vb_t)
            mse.append(mse_t)
        vb = tf.stack(vb, axis=1)
        prior = self.prior_bpd(x0)
        return BitsPerDim(
            total=prior + tf.reduce_sum(vb, axis=1), prior=prior, vb=vb, mse=tf.stack(mse, axis=1)
        )
