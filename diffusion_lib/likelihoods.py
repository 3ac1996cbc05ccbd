"""Closed-form Gaussian quantities used by the variational bound.

    normal_kl                               KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, nats
    discretized_gaussian_log_likelihood     log-probability of data quantised to `num_bins` levels in [-1, 1]
                                            under N(mean, e^(2 log_scale)) (Ho et al. 2020, eq. 13), nats

Both work elementwise; callers reduce over dimensions. No network, no sampling here.
"""

from __future__ import annotations

import math

import tensorflow as tf


def normal_kl(mean1, logvar1, mean2, logvar2) -> tf.Tensor:
    """KL divergence between diagonal Gaussians, elementwise, in nats.

    KL = 0.5 * (-1 + logvar2 - logvar1 + exp(logvar1 - logvar2) + (mean1 - mean2)^2 exp(-logvar2)).
    All four arguments broadcast against each other.
    """
    return 0.5 * (
        -1.0
        + logvar2
        - logvar1
        + tf.exp(logvar1 - logvar2)
        + tf.square(mean1 - mean2) * tf.exp(-logvar2)
    )


def discretized_gaussian_log_likelihood(
    x: tf.Tensor, means: tf.Tensor, log_scales: tf.Tensor, num_bins: int = 256
) -> tf.Tensor:
    """log P(x) for x on the grid of `num_bins` evenly spaced values in [-1, 1], elementwise, nats.

    Each interior value owns the bin [x - h, x + h] with h = 1 / (num_bins - 1); the two end
    values own the tails (-inf, -1 + h] and [1 - h, inf) (Ho et al. 2020, eq. 13).
    x, means, log_scales: same shape (log_scales may broadcast). Uses log-CDFs for the tails
    so that far-from-mean bins do not underflow to log(0).
    """
    if num_bins < 2:
        raise ValueError(f"num_bins must be at least 2, got {num_bins}")
    half_width = 1.0 / (num_bins - 1)
    centered = x - means
    inv_stdv = tf.exp(-log_scales)
    upper = inv_stdv * (centered + half_width)
    lower = inv_stdv * (centered - half_width)
    log_cdf_upper = log_ndtr(upper)
    log_one_minus_cdf_lower = log_ndtr(-lower)
    # log(Phi(u) - Phi(l)) = log Phi(u) + log(1 - exp(log Phi(l) - log Phi(u))); on the side of the
    # mean where both CDFs are near 1 use the mirrored form to keep precision.
    log_cdf_lower = log_ndtr(lower)
    log_mid_left = log_cdf_upper + _log1mexp(log_cdf_upper - log_cdf_lower)
    log_sf_upper = log_ndtr(-upper)
    log_mid_right = log_one_minus_cdf_lower + _log1mexp(log_one_minus_cdf_lower - log_sf_upper)
    log_mid = tf.where(centered < 0.0, log_mid_left, log_mid_right)
    edge = 1.0 - half_width / 2.0  # any threshold strictly between the last two grid values
    return tf.where(x < -edge, log_cdf_upper, tf.where(x > edge, log_one_minus_cdf_lower, log_mid))


def log_ndtr(x: tf.Tensor) -> tf.Tensor:
    """log Phi(x), the log of the standard normal CDF, accurate in both tails.

    TensorFlow has no public log_ndtr. Piecewise: log1p(-Phi(-x)) above 0; log(erfc(-x/sqrt2)/2)
    down to a dtype-dependent threshold (erfc underflows near x = -37 in float64, -13 in
    float32); below it the asymptotic series
    log Phi(x) = -x^2/2 - log(-x) - log(2 pi)/2 + log(1 - 1/x^2 + 3/x^4 - 15/x^6 + 105/x^8).
    Each branch gets an input clamped to its own range so no branch makes NaN gradients.
    """
    threshold = -20.0 if x.dtype == tf.float64 else -10.0
    sqrt_half = tf.constant(math.sqrt(0.5), x.dtype)
    upper_x = tf.maximum(x, 0.0)
    upper = tf.math.log1p(-0.5 * tf.math.erfc(upper_x * sqrt_half))
    mid_x = tf.clip_by_value(x, threshold, 0.0)
    mid = tf.math.log(0.5 * tf.math.erfc(-mid_x * sqrt_half))
    low_x = tf.minimum(x, threshold)
    inv_sq = 1.0 / tf.square(low_x)
    series = 1.0 - inv_sq * (1.0 - 3.0 * inv_sq * (1.0 - 5.0 * inv_sq * (1.0 - 7.0 * inv_sq)))
    low = (
        -0.5 * tf.square(low_x)
        - tf.math.log(-low_x)
        - 0.5 * math.log(2.0 * math.pi)
        + tf.math.log(series)
    )
    return tf.where(x > 0.0, upper, tf.where(x >= threshold, mid, low))


def _log1mexp(a: tf.Tensor) -> tf.Tensor:
    """log(1 - exp(-a)) for a >= 0, accurate for small and large a (Maechler 2012)."""
    a = tf.maximum(a, tf.constant(1e-30, a.dtype))
    return tf.where(
        a < math.log(2.0),
        tf.math.log(-tf.math.expm1(-a)),
        tf.math.log1p(-tf.exp(-a)),
    )
