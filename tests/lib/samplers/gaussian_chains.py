"""Exact moments of DDPM and DDIM chains on data N(MU, STD^2 I) under the Bayes-optimal noise
predictor: every step is then a linear-Gaussian map, so a scalar recursion, derived here
independently of the library, gives the mean and variance of what the chain produces
(including its discretisation error for few steps)."""

import math

import numpy as np

MU, STD, N, D = 0.5, 0.5, 20_000, 2


def chain_moments(betas, timesteps, eta, mu, std):
    """Exact mean and variance of the final sample of DDIM (eta) on `timesteps`, x_T ~ N(0, 1).

    Tracks y = x - sqrt(abar_t) mu, which the optimal predictor maps linearly:
    pred_x0 = mu + sqrt(abar_t) s^2 y / v_t, pred_eps = sqrt(1 - abar_t) y / v_t,
    v_t = abar_t s^2 + 1 - abar_t.
    """
    abar_all = np.cumprod(1 - np.asarray(betas, np.float64))
    seq = list(timesteps)[::-1]
    m, var = -math.sqrt(abar_all[seq[0]]) * mu, 1.0
    for i, t in enumerate(seq):
        a_t = abar_all[t]
        a_s = abar_all[seq[i + 1]] if i + 1 < len(seq) else 1.0
        v_t = a_t * std**2 + 1 - a_t
        sigma2 = eta**2 * (1 - a_s) / (1 - a_t) * (1 - a_t / a_s)
        gain = (math.sqrt(a_s * a_t) * std**2 + math.sqrt((1 - a_s - sigma2) * (1 - a_t))) / v_t
        m, var = gain * m, gain**2 * var + sigma2
    return mu + m, var


def ancestral_moments(betas, mu, std):
    """Exact moments for DDPM Alg. 2 with beta~_t variance, from the posterior coefficients."""
    betas = np.asarray(betas, np.float64)
    abar = np.cumprod(1 - betas)
    m, var = -math.sqrt(abar[-1]) * mu, 1.0
    for t in range(len(betas) - 1, -1, -1):
        a_prev = abar[t - 1] if t > 0 else 1.0
        coef1 = betas[t] * math.sqrt(a_prev) / (1 - abar[t])
        coef2 = (1 - a_prev) * math.sqrt(1 - betas[t]) / (1 - abar[t])
        v_t = abar[t] * std**2 + 1 - abar[t]
        gain = coef1 * math.sqrt(abar[t]) * std**2 / v_t + coef2
        noise_var = betas[t] * (1 - a_prev) / (1 - abar[t]) if t > 0 else 0.0
        m, var = gain * m, gain**2 * var + noise_var
    return mu + m, var


def assert_moments(samples, mean, var):
    x = samples.numpy().astype(np.float64)
    n = x.size
    assert abs(x.mean() - mean) < 5 * math.sqrt(var / n), (x.mean(), mean)
    assert abs(x.var() - var) < 5 * var * math.sqrt(2 / n), (x.var(), var)
