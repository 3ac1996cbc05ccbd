"""Distributions whose density, score and optimal denoisers are known in closed form.

They are oracles: plugged into samplers and objectives in place of a trained network, they
tell whether the math is right with no training at all (a Gaussian's score is -(x - mu) / var).

    GaussianMixture     sum_k w_k N(mu_k, s_k^2 I); log density, score of the data smoothed by
                        N(0, sigma^2 I) (each component's variance becomes s_k^2 + sigma^2), and
                        exact sampling.
    optimal_eps_fn      for data N(mu, s^2 I) under a GaussianDiffusion, the Bayes-optimal noise
                        predictor E[eps | x_t] = sqrt(1 - abar_t)(x_t - sqrt(abar_t) mu)
                                                 / (abar_t s^2 + 1 - abar_t).
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf
from numpy.typing import ArrayLike

from diffusion_lib import _checks


class GaussianMixture:
    """Isotropic Gaussian mixture in d dimensions.

    Args:
      weights: [K] positive, normalised here.
      means: [K, d].
      stds: [K] per-component standard deviations s_k.
    """

    def __init__(self, weights: ArrayLike, means: ArrayLike, stds: ArrayLike):
        weights = np.asarray(weights, dtype=np.float64)
        means = np.asarray(means, dtype=np.float64)
        stds = np.asarray(stds, dtype=np.float64)
        if weights.ndim != 1 or weights.size == 0 or np.any(weights <= 0):
            raise ValueError("weights must be a non-empty 1-D array of positive numbers")
        if means.ndim != 2 or means.shape[0] != weights.size:
            raise ValueError(f"means must have shape [K={weights.size}, d], got {means.shape}")
        if stds.shape != weights.shape or np.any(stds <= 0):
            raise ValueError(f"stds must have shape [K={weights.size}] and be positive")
        self.weights = weights / weights.sum()
        self.means = means
        self.stds = stds
        self.dim = int(means.shape[1])

    def _component_log_probs(self, x: tf.Tensor, sigma) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """log w_k + log N(x; mu_k, (s_k^2 + sigma^2) I) [B, K], diffs x - mu_k [B, K, d], vars [B, K]."""
        dt = x.dtype
        if sigma is None:
            sigma = tf.zeros([tf.shape(x)[0]], dt)
        elif isinstance(sigma, tf.Tensor | tf.Variable):
            sigma = tf.cast(sigma, dt)
        else:  # a Python or NumPy number: tf.cast would round it through float32 first
            sigma = tf.constant(np.asarray(sigma, np.float64), dt)
        sigma = tf.broadcast_to(sigma, [tf.shape(x)[0]])
        variances = tf.constant(self.stds**2, dt)[None, :] + tf.square(sigma)[:, None]
        diffs = x[:, None, :] - tf.constant(self.means, dt)[None, :, :]
        sq = tf.reduce_sum(tf.square(diffs), axis=-1)
        log_norm = -0.5 * self.dim * (math.log(2.0 * math.pi) + tf.math.log(variances))
        log_probs = (
            tf.math.log(tf.constant(self.weights, dt))[None, :] + log_norm - 0.5 * sq / variances
        )
        return log_probs, diffs, variances

    def _points(self, x) -> tf.Tensor:
        x = _checks.as_float_tensor(x, "x")
        if x.shape.rank != 2 or (x.shape[1] is not None and x.shape[1] != self.dim):
            raise ValueError(f"x must have shape [B, {self.dim}], got {x.shape}")
        return x

    def log_prob(self, x, sigma=None) -> tf.Tensor:
        """log p_sigma(x) [B] for x [B, d]; sigma (scalar or [B]) smooths the density."""
        log_probs, _, _ = self._component_log_probs(self._points(x), sigma)
        return tf.reduce_logsumexp(log_probs, axis=1)

    def score(self, x, sigma=None) -> tf.Tensor:
        """grad_x log p_sigma(x) [B, d] = sum_k r_k(x) * (-(x - mu_k) / (s_k^2 + sigma^2))."""
        log_probs, diffs, variances = self._component_log_probs(self._points(x), sigma)
        resp = tf.nn.softmax(log_probs, axis=1)
        return -tf.reduce_sum(resp[:, :, None] * diffs / variances[:, :, None], axis=1)

    def sample(self, n: int, seed) -> tuple[np.ndarray, np.ndarray]:
        """n exact samples [n, d] float64 and their component labels [n], from an int seed."""
        rng = np.random.default_rng(seed)
        labels = rng.choice(self.weights.size, size=n, p=self.weights)
        points = self.means[labels] + self.stds[labels, None] * rng.standard_normal((n, self.dim))
        return points, labels


def optimal_eps_fn(diffusion, mean, std: float):
    """Returns model(x_t, t), the exact E[eps | x_t] for data N(mean, std^2 I) under `diffusion`.

    `mean` is a scalar or broadcasts against one example. Works for any data shape [B, ...].
    """
    abar_table = tf.constant(diffusion.alphas_cumprod, tf.float64)
    mean = np.asarray(mean, dtype=np.float64)
    var = float(std) ** 2

    def model(x_t, t):
        abar = tf.cast(_checks.expand_to_rank(tf.gather(abar_table, t), x_t.shape.rank), x_t.dtype)
        mu = tf.cast(mean, x_t.dtype)
        return tf.sqrt(1.0 - abar) * (x_t - tf.sqrt(abar) * mu) / (abar * var + 1.0 - abar)

    return model


class GaussianData:
    """Data N(mean, cov) in d dimensions under a score SDE: every marginal is Gaussian,

        x(t) ~ N(alpha(t) mean, C_t),   C_t = alpha(t)^2 cov + std(t)^2 I,

    so the score -(C_t)^-1 (x - alpha mean), the density and the probability-flow ODE's map are
    exact. With cov = U diag(l) U^T, C_t shares U and the ODE keeps each whitened coordinate
    u_k^T (x - alpha mean) / sqrt(alpha^2 l_k + std^2) constant: the flow's exact solution.
    """

    def __init__(self, mean, cov):
        mean = np.asarray(mean, np.float64)
        cov = np.asarray(cov, np.float64)
        if mean.ndim != 1 or cov.shape != (mean.size, mean.size):
            raise ValueError(f"need mean [d] and cov [d, d], got {mean.shape} and {cov.shape}")
        if not np.allclose(cov, cov.T):
            raise ValueError("cov must be symmetric")
        eigenvalues, basis = np.linalg.eigh(cov)
        if np.any(eigenvalues < 0):
            raise ValueError("cov must be positive semi-definite")
        self.mean, self.cov, self.dim = mean, cov, mean.size
        self._values, self._basis = eigenvalues, basis

    def _spectrum(self, sde, t, dtype):
        """alpha [B], std [B] and the marginal's eigenvalues [B, d] at times t [B]."""
        alpha, std = sde.marginal(t, tf.float64)
        values = tf.square(alpha)[:, None] * self._values[None, :] + tf.square(std)[:, None]
        return tf.cast(alpha, dtype), tf.cast(std, dtype), tf.cast(values, dtype)

    def _centered_rotated(self, x, alpha):
        centered = x - alpha[:, None] * tf.constant(self.mean, x.dtype)[None, :]
        return tf.matmul(centered, tf.constant(self._basis, x.dtype))

    def score_fn(self, sde):
        """score_fn(x, t): the exact score of p_t, for x [B, d] and t [B]."""

        def score(x, t):
            alpha, std = sde.marginal(tf.cast(t, tf.float64), tf.float64)
            return self._score(x, alpha, std)

        return score

    def _score(self, x, alpha, std):
        """The score of N(alpha mean, alpha^2 cov + std^2 I) at x [B, d]; alpha, std [B]."""
        values = tf.square(alpha)[:, None] * self._values[None, :] + tf.square(std)[:, None]
        rotated = self._centered_rotated(x, tf.cast(alpha, x.dtype)) / tf.cast(values, x.dtype)
        return -tf.matmul(rotated, tf.constant(self._basis.T, x.dtype))

    def sigma_score_fn(self):
        """score_fn(x, sigma) of the data under noise N(0, sigma^2 I), sigma [B]: the exact
        model a noise-conditional score network (NCSN) learns."""

        def score(x, sigma):
            sigma = tf.cast(sigma, tf.float64)
            return self._score(x, tf.ones_like(sigma), sigma)

        return score

    def denoiser(self, x, sigma) -> tf.Tensor:
        """E[y | y + sigma z = x] = mu + Sigma (Sigma + sigma^2 I)^-1 (x - mu) at x [B, d], sigma
        [B]: the ideal denoiser (EDM's D) of the data under noise N(0, sigma^2 I)."""
        x = _checks.as_float_tensor(x, "x")
        sigma = tf.cast(sigma, tf.float64)
        score = tf.cast(self._score(x, tf.ones_like(sigma), sigma), x.dtype)
        return x + tf.square(tf.cast(sigma, x.dtype))[:, None] * score

    def eps_fn(self, diffusion):
        """model(x_t, t) = E[eps | x_t] under a DDPM's `diffusion`, t integer [B]: the exact
        model its noise-predicting network learns (-sqrt(1 - abar_t) times the score)."""
        abar_table = tf.constant(diffusion.alphas_cumprod, tf.float64)

        def model(x_t, t):
            abar = tf.gather(abar_table, t)
            score = self._score(x_t, tf.sqrt(abar), tf.sqrt(1.0 - abar))
            return -tf.cast(tf.sqrt(1.0 - abar), x_t.dtype)[:, None] * score

        return model

    def conditional(self, known, values) -> tuple[np.ndarray, np.ndarray]:
        """(mean [B, u], cov [u, u]) of the coordinates not in `known` (a boolean mask [d])
        given theirs, `values` [B, k]: mu_u + S_uk S_kk^-1 (v - mu_k), S_uu - S_uk S_kk^-1 S_ku."""
        known = np.asarray(known, bool)
        if known.shape != (self.dim,) or known.all() or not known.any():
            raise ValueError(f"known must mark some but not all of the {self.dim} coordinates")
        u, k = ~known, known
        gain = self.cov[np.ix_(u, k)] @ np.linalg.inv(self.cov[np.ix_(k, k)])
        values = np.atleast_2d(np.asarray(values, np.float64))
        mean = self.mean[u][None, :] + (values - self.mean[k][None, :]) @ gain.T
        return mean, self.cov[np.ix_(u, u)] - gain @ self.cov[np.ix_(k, u)]

    def log_prob(self, sde, x, t) -> tf.Tensor:
        """log p_t(x) [B] in nats (t a number or [B])."""
        x = _checks.as_float_tensor(x, "x")
        t = tf.broadcast_to(tf.cast(t, tf.float64), [tf.shape(x)[0]])
        alpha, _, values = self._spectrum(sde, t, x.dtype)
        rotated = self._centered_rotated(x, alpha)
        return -0.5 * tf.reduce_sum(
            tf.math.log(2.0 * math.pi * values) + tf.square(rotated) / values, axis=1
        )

    def flow(self, sde, x, s: float, t: float) -> tf.Tensor:
        """The probability-flow ODE's exact solution: x(t) from x(s) = x."""
        x = _checks.as_float_tensor(x, "x")
        batch = tf.shape(x)[0]
        a_s, _, v_s = self._spectrum(sde, tf.fill([batch], tf.constant(s, tf.float64)), x.dtype)
        a_t, _, v_t = self._spectrum(sde, tf.fill([batch], tf.constant(t, tf.float64)), x.dtype)
        whitened = self._centered_rotated(x, a_s) / tf.sqrt(v_s)
        back = tf.matmul(whitened * tf.sqrt(v_t), tf.constant(self._basis.T, x.dtype))
        return back + a_t[:, None] * tf.constant(self.mean, x.dtype)[None, :]

    def sample(self, n: int, seed) -> np.ndarray:
        """n exact samples [n, d] float64."""
        rng = np.random.default_rng(seed)
        root = self._basis * np.sqrt(self._values)[None, :]
        return self.mean[None, :] + rng.standard_normal((n, self.dim)) @ root.T
