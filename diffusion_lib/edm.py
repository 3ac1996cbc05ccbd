"""EDM's preconditioned denoiser and its training loss (Karras et al. 2022, table 1).

A network F is wrapped into a denoiser of x = y + n, n ~ N(0, sigma^2 I), y the data:

    D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x; c_noise(sigma))

    c_skip = sigma_data^2 / (sigma^2 + sigma_data^2)      c_out = sigma sigma_data / sqrt(sigma^2 + sigma_data^2)
    c_in   = 1 / sqrt(sigma^2 + sigma_data^2)             c_noise = ln(sigma) / 4

so that F's input and its training target both have unit variance at every sigma for data of
standard deviation sigma_data. Training draws ln sigma ~ N(p_mean, p_std^2) and weights each
example's squared error by lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 =
1 / c_out^2: the loss on F is then an unweighted regression on its unit-variance target.

The denoiser is a score model of the variance-exploding process x = y + sigma z: by Tweedie's
formula the score is (D(x; sigma) - x) / sigma^2. For Gaussian data N(mu, Sigma) the ideal
denoiser is D(x; sigma) = mu + Sigma (Sigma + sigma^2 I)^-1 (x - mu)
(`analytic.GaussianData.denoiser`).
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from diffusion_lib import _checks

# EDM's settings (table 1): the data's standard deviation for images in [-1, 1], the training
# noise distribution, and the sampler's noise range.
SIGMA_DATA = 0.5
P_MEAN, P_STD = -1.2, 1.2
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0


def preconditioning(sigma, sigma_data: float = SIGMA_DATA):
    """(c_skip, c_out, c_in, c_noise) at noise levels `sigma` (any shape, float)."""
    sigma = tf.convert_to_tensor(sigma)
    sd2 = tf.cast(sigma_data**2, sigma.dtype)
    total = tf.square(sigma) + sd2
    c_skip = sd2 / total
    c_out = sigma * tf.cast(sigma_data, sigma.dtype) * tf.math.rsqrt(total)
    c_in = tf.math.rsqrt(total)
    c_noise = 0.25 * tf.math.log(sigma)
    return c_skip, c_out, c_in, c_noise


def loss_weight(sigma, sigma_data: float = SIGMA_DATA):
    """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2."""
    sigma = tf.convert_to_tensor(sigma)
    sd2 = tf.cast(sigma_data**2, sigma.dtype)
    return (tf.square(sigma) + sd2) / (tf.square(sigma) * sd2)


def denoiser(network: Callable[..., tf.Tensor], sigma_data: float = SIGMA_DATA):
    """D(x, sigma [B], **kw) of a network F(x_in, sigma, **kw): F is called with the scaled input
    c_in x and the noise level itself (its embedding computes c_noise, `conditioning="c_noise"`),
    and its output is taken in x's dtype."""

    def denoise(x, sigma, **kw):
        sigma = tf.cast(sigma, x.dtype)
        c_skip, c_out, c_in, _ = (
            _checks.expand_to_rank(c, x.shape.rank) for c in preconditioning(sigma, sigma_data)
        )
        out = tf.cast(network(c_in * x, sigma, **kw), x.dtype)
        return c_skip * x + c_out * out

    return denoise


def denoiser_loss(denoise, x, sigma, noise, sigma_data: float = SIGMA_DATA) -> tf.Tensor:
    """Per-example lambda(sigma) mean((D(x + sigma n; sigma) - x)^2), [B]: x [B, ...] the data,
    sigma [B] its noise levels, `noise` N(0, I) like x."""
    sigma = tf.cast(sigma, x.dtype)
    noisy = x + _checks.expand_to_rank(sigma, x.shape.rank) * noise
    error = tf.square(denoise(noisy, sigma) - x)
    per_example = tf.reduce_mean(tf.reshape(error, [tf.shape(x)[0], -1]), axis=1)
    return loss_weight(sigma, sigma_data) * per_example


def score_of(denoise, x, sigma, **kw) -> tf.Tensor:
    """The score (D(x; sigma) - x) / sigma^2 of denoiser `denoise` at x [B, ...], sigma [B]."""
    sigma = _checks.expand_to_rank(tf.cast(sigma, x.dtype), x.shape.rank)
    return (denoise(x, tf.reshape(sigma, [-1]), **kw) - x) / tf.square(sigma)


__all__ = [
    "P_MEAN",
    "P_STD",
    "SIGMA_DATA",
    "SIGMA_MAX",
    "SIGMA_MIN",
    "denoiser",
    "denoiser_loss",
    "loss_weight",
    "preconditioning",
    "score_of",
]
