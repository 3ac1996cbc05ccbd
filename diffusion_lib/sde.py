"""Score SDEs (Song et al. 2021, "Score-Based Generative Modeling through Stochastic Differential
Equations"): one continuous-time view of NCSN and DDPM.

Data x(0) is carried to noise by the forward SDE

    dx = f(x, t) dt + g(t) dw,    t in [0, T = 1],

whose transition from the data is Gaussian, x(t) | x(0) ~ N(alpha(t) x(0), std(t)^2 I). The
reverse-time SDE  dx = [f - g^2 grad log p_t(x)] dt + g dw_bar  and the probability-flow ODE
dx/dt = f - g^2 grad log p_t(x) / 2 share its marginals p_t; both need only the score.

    VPSDE       f = -beta(t) x / 2,  g = sqrt(beta(t)),  beta(t) = beta_min + t (beta_max - beta_min)
                alpha = exp(-B(t) / 2), std^2 = 1 - alpha^2, B(t) = int_0^t beta. Its N-step
                discretisation is DDPM's chain with betas beta_min/N ... beta_max/N (linspace):
                with N = 1000, 1e-4 ... 0.02, the linear schedule of Ho et al. 2020.
    SubVPSDE    f as VP, g^2 = beta(t) (1 - exp(-2 B(t))); alpha as VP, std = 1 - alpha^2
                (never above VP's; better likelihoods in the paper).
    VESDE       f = 0, g = sigma(t) sqrt(2 log(sigma_max / sigma_min)),
                sigma(t) = sigma_min (sigma_max / sigma_min)^t; alpha = 1, std = sigma(t). Its
                N-step discretisation is NCSN's geometric noise levels sigma_max ... sigma_min.

VE's std(t) = sigma(t) is exact for the SDE started from the data perturbed by N(0, sigma_min^2),
as NCSN's smallest level is: Var[x(t) | data] = sigma_min^2 + int_0^t g^2 = sigma(t)^2. At
sigma_min = 0.01 (data in [-1, 1]) that is below pixel quantisation.

Time t is a float tensor [B]; coefficients are computed in float64 and cast to x's dtype, so a
float64 chain is float64 throughout. Samplers (`samplers/sde.py`) take score_fn(x, t), the
score of p_t, as a plain callable; `marginal_score_fn` turns a denoiser of another
parameterisation into one.
"""

from __future__ import annotations

import abc
import math

import numpy as np
import tensorflow as tf

from diffusion_lib import _checks


def _time(t, x: tf.Tensor | None = None, dtype=tf.float64) -> tf.Tensor:
    """t as a float64 vector [B] (a Python number becomes [1], or [B] beside x)."""
    if isinstance(t, tf.Tensor | tf.Variable):
        t = tf.cast(t, tf.float64)
    else:
        t = tf.constant(np.asarray(t, np.float64))
    if t.shape.rank == 0:
        t = tf.reshape(t, [1]) if x is None else tf.fill([tf.shape(x)[0]], t)
    return tf.cast(t, dtype)


class SDE(abc.ABC):
    """A forward SDE with Gaussian transitions from the data. Subclasses define the coefficients
    as functions of a float64 time vector; the public methods accept any float dtype."""

    name: str = ""
    T: float = 1.0
    # The smallest time samplers integrate to by default (score_sde's choices: 1e-3 for VP and
    # sub-VP, 1e-5 for VE), where the score's scale 1 / std is still finite.
    default_eps: float = 1e-3

    def __init__(self, num_steps: int = 1000):
        self.N = _checks.positive_int(num_steps, "num_steps")

    # ---- coefficients, float64 time vector in, float64 vectors out ----
    @abc.abstractmethod
    def _drift_coeff(self, t: tf.Tensor) -> tf.Tensor:
        """f(x, t) = drift_coeff(t) * x (every SDE here is linear in x)."""

    @abc.abstractmethod
    def _g(self, t: tf.Tensor) -> tf.Tensor:
        """The diffusion coefficient g(t)."""

    @abc.abstractmethod
    def _alpha_std(self, t: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """(alpha(t), std(t)) of the transition x(t) | x(0) ~ N(alpha x(0), std^2 I)."""

    @property
    @abc.abstractmethod
    def prior_std(self) -> float:
        """The prior N(0, prior_std^2 I) that x(T) is taken to follow."""

    @abc.abstractmethod
    def discrete_chain(self) -> dict[str, np.ndarray]:
        """The N-step discrete process this SDE is the limit of (float64 tables over levels
        i = 0..N-1, the time of each given by `discrete_times`): "betas" for VP types, "sigmas"
        (increasing) for VE."""

    # ---- public API ----
    def drift(self, x, t) -> tf.Tensor:
        x = _checks.as_float_tensor(x, "x")
        return (
            _checks.expand_to_rank(tf.cast(self._drift_coeff(_time(t, x)), x.dtype), x.shape.rank)
            * x
        )

    def diffusion(self, t, dtype=tf.float64) -> tf.Tensor:
        return tf.cast(self._g(_time(t)), dtype)

    def marginal(self, t, dtype=tf.float64) -> tuple[tf.Tensor, tf.Tensor]:
        """(alpha(t), std(t)), each [B]."""
        alpha, std = self._alpha_std(_time(t))
        return tf.cast(alpha, dtype), tf.cast(std, dtype)

    def perturb(self, x0, t, noise) -> tf.Tensor:
        """x(t) = alpha(t) x0 + std(t) noise, for denoising score matching."""
        x0 = _checks.as_float_tensor(x0, "x0")
        alpha, std = self.marginal(_time(t, x0), x0.dtype)
        rank = x0.shape.rank
        return _checks.expand_to_rank(alpha, rank) * x0 + _checks.expand_to_rank(
            std, rank
        ) * tf.cast(noise, x0.dtype)

    def prior_sample(self, shape, seed, dtype=tf.float32) -> tf.Tensor:
        return self.prior_std * tf.random.stateless_normal(
            shape, _checks.seed_tensor(seed), dtype=dtype
        )

    def prior_logp(self, z) -> tf.Tensor:
        """log N(z; 0, prior_std^2 I) [B], summed over each example."""
        z = _checks.as_float_tensor(z, "z")
        dim = int(np.prod(z.shape[1:]))
        sq = tf.reduce_sum(tf.reshape(tf.square(z), [tf.shape(z)[0], -1]), axis=1)
        var = self.prior_std**2
        return -0.5 * dim * math.log(2 * math.pi * var) - 0.5 * sq / var

    def time_grid(self, num_steps: int, eps: float | None = None) -> np.ndarray:
        """num_steps + 1 times from T down to eps, evenly spaced (float64)."""
        eps = self.default_eps if eps is None else eps
        if not 0 < eps < self.T:
            raise ValueError(f"eps must be in (0, {self.T}), got {eps!r}")
        return np.linspace(self.T, eps, _checks.positive_int(num_steps, "num_steps") + 1)

    def reverse_drift(self, score_fn, x, t, *, probability_flow: bool = False) -> tf.Tensor:
        """f - g^2 s (reverse SDE) or f - g^2 s / 2 (probability-flow ODE), at x [B, ...], t [B]."""
        t = _time(t, x)
        g2 = _checks.expand_to_rank(tf.cast(tf.square(self._g(t)), x.dtype), x.shape.rank)
        score = _checks.call_network(score_fn, x, tf.cast(t, x.dtype))
        return self.drift(x, t) - (0.5 if probability_flow else 1.0) * g2 * score

    def to_dict(self) -> dict:
        return {"name": self.name, "num_steps": self.N, **self._params()}

    @abc.abstractmethod
    def _params(self) -> dict: ...

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v}" for k, v in self._params().items())
        return f"{type(self).__name__}({params}, num_steps={self.N})"


class VPSDE(SDE):
    name = "vp"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, num_steps: int = 1000):
        super().__init__(num_steps)
        self.beta_min = _checks.positive_number(beta_min, "beta_min")
        self.beta_max = _checks.positive_number(beta_max, "beta_max")
        if self.beta_max <= self.beta_min:
            raise ValueError(f"beta_max must exceed beta_min, got {beta_max} <= {beta_min}")

    def _params(self) -> dict:
        return {"beta_min": self.beta_min, "beta_max": self.beta_max}

    def _beta(self, t):
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def _integral(self, t):
        """B(t) = int_0^t beta(s) ds."""
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * tf.square(t)

    def _drift_coeff(self, t):
        return -0.5 * self._beta(t)

    def _g(self, t):
        return tf.sqrt(self._beta(t))

    def _alpha_std(self, t):
        alpha = tf.exp(-0.5 * self._integral(t))
        return alpha, tf.sqrt(-tf.math.expm1(-self._integral(t)))

    @property
    def prior_std(self) -> float:
        return 1.0

    def discrete_chain(self) -> dict[str, np.ndarray]:
        return {"betas": np.linspace(self.beta_min / self.N, self.beta_max / self.N, self.N)}


class SubVPSDE(VPSDE):
    name = "subvp"

    def _g(self, t):
        return tf.sqrt(self._beta(t) * -tf.math.expm1(-2.0 * self._integral(t)))

    def _alpha_std(self, t):
        alpha = tf.exp(-0.5 * self._integral(t))
        return alpha, -tf.math.expm1(-self._integral(t))


class VESDE(SDE):
    name = "ve"
    default_eps = 1e-5

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, num_steps: int = 1000):
        super().__init__(num_steps)
        self.sigma_min = _checks.positive_number(sigma_min, "sigma_min")
        self.sigma_max = _checks.positive_number(sigma_max, "sigma_max")
        if self.sigma_max <= self.sigma_min:
            raise ValueError(f"sigma_max must exceed sigma_min, got {sigma_max} <= {sigma_min}")

    def _params(self) -> dict:
        return {"sigma_min": self.sigma_min, "sigma_max": self.sigma_max}

    def _sigma(self, t):
        return self.sigma_min * tf.exp(t * math.log(self.sigma_max / self.sigma_min))

    def _drift_coeff(self, t):
        return tf.zeros_like(t)

    def _g(self, t):
        return self._sigma(t) * math.sqrt(2.0 * math.log(self.sigma_max / self.sigma_min))

    def _alpha_std(self, t):
        return tf.ones_like(t), self._sigma(t)

    @property
    def prior_std(self) -> float:
        return self.sigma_max

    def discrete_chain(self) -> dict[str, np.ndarray]:
        return {
            "sigmas": np.exp(np.linspace(np.log(self.sigma_min), np.log(self.sigma_max), self.N))
        }


SDES: dict[str, type[SDE]] = {cls.name: cls for cls in (VPSDE, SubVPSDE, VESDE)}


def make_sde(name: str, **params) -> SDE:
    """An SDE by name ("vp", "subvp", "ve") with its parameters."""
    if name not in SDES:
        raise ValueError(f"sde must be one of {sorted(SDES)}, got {name!r}")
    return SDES[name](**params)


def sde_from_dict(record: dict) -> SDE:
    record = dict(record)
    return make_sde(record.pop("name"), **record)


def data_prediction(sde: SDE, score, x, t) -> tf.Tensor:
    """Tweedie's estimate of x(0): (x + std^2 score) / alpha, at t [B]."""
    alpha, std = sde.marginal(_time(t, x), x.dtype)
    rank = x.shape.rank
    return (x + _checks.expand_to_rank(tf.square(std), rank) * score) / _checks.expand_to_rank(
        alpha, rank
    )


def marginal_score_fn(sde: SDE, *, eps_fn=None, x0_fn=None):
    """score_fn(x, t) from a noise predictor eps_fn(x, t) (score = -eps / std) or a data
    predictor x0_fn(x, t) (score = -(x - alpha x0) / std^2): the same network, read as a score."""
    if (eps_fn is None) == (x0_fn is None):
        raise ValueError("give exactly one of eps_fn and x0_fn")

    def score_fn(x, t):
        alpha, std = sde.marginal(t, x.dtype)
        rank = x.shape.rank
        alpha, std = _checks.expand_to_rank(alpha, rank), _checks.expand_to_rank(std, rank)
        if eps_fn is not None:
            return -_checks.call_network(eps_fn, x, t, name="eps_fn output") / std
        x0 = _checks.call_network(x0_fn, x, t, name="x0_fn output")
        return -(x - alpha * x0) / tf.square(std)

    return score_fn


# ---- discrete models read as score models of the SDE they discretise ----


def discrete_times(sde: SDE) -> np.ndarray:
    """t_i for each level i of the discrete chain: the time at which the SDE's marginal matches
    the level's (VE: sigma(t_i) = sigma_i, so t_i = i / (N - 1); VP: exp(-B(t_i)) = abar_i)."""
    chain = sde.discrete_chain()
    if "sigmas" in chain:
        return np.log(chain["sigmas"] / sde.sigma_min) / np.log(sde.sigma_max / sde.sigma_min)
    log_abar = np.cumsum(np.log1p(-chain["betas"]))
    # B(t) = beta_min t + (beta_max - beta_min) t^2 / 2 = -log abar, solved for t >= 0.
    a, b = 0.5 * (sde.beta_max - sde.beta_min), sde.beta_min
    return (-b + np.sqrt(b * b - 4 * a * log_abar)) / (2 * a)


def vp_sde_of(diffusion) -> VPSDE:
    """The VP SDE whose N-step discretisation is `diffusion`'s beta schedule (DDPM's linear
    schedule: beta_min = T beta_1, beta_max = T beta_T), or ValueError when there is none."""
    betas = np.asarray(diffusion.betas, np.float64)
    n = betas.size
    sde = VPSDE(beta_min=betas[0] * n, beta_max=betas[-1] * n, num_steps=n)
    if n < 2 or not np.allclose(betas, sde.discrete_chain()["betas"], rtol=1e-9, atol=0):
        raise ValueError(
            "this DDPM's beta schedule is not the VP SDE's discretisation (it needs the linear "
            "schedule); its network cannot be read as a VP score model exactly"
        )
    return sde


def ve_sde_of(sigmas) -> VESDE:
    """The VE SDE whose N-level discretisation is NCSN's geometric `sigmas` (decreasing)."""
    sigmas = _checks.noise_levels(sigmas)
    sde = VESDE(sigma_min=sigmas[-1], sigma_max=sigmas[0], num_steps=sigmas.size)
    if sigmas.size < 2 or not np.allclose(
        sigmas[::-1], sde.discrete_chain()["sigmas"], rtol=1e-9, atol=0
    ):
        raise ValueError(
            "these noise levels are not geometric from sigma_max to sigma_min: not the VE SDE's "
            "discretisation"
        )
    return sde


def _nearest_level(table: tf.Tensor, value: tf.Tensor) -> tf.Tensor:
    """Index of the entry of the increasing float64 `table` [N] nearest to each of `value` [B]."""
    above = tf.clip_by_value(tf.searchsorted(table, value), 1, tf.size(table) - 1)
    below = above - 1
    nearer_below = tf.abs(tf.gather(table, below) - value) <= tf.abs(
        tf.gather(table, above) - value
    )
    return tf.where(nearer_below, below, above)


def score_from_diffusion_model(model, diffusion, sde: VPSDE | None = None):
    """score_fn(x, t) of a DDPM's network (any mean type): at the discrete level i whose abar_i
    matches the SDE's alpha(t)^2 (exact at the chain's own times, `discrete_times`),
    score = -eps_theta(x, i) / sqrt(1 - abar_i)."""
    sde = sde or vp_sde_of(diffusion)
    neg_log_abar = tf.constant(-np.log(np.asarray(diffusion.alphas_cumprod, np.float64)))

    def score_fn(x, t):
        alpha, _ = sde.marginal(t, tf.float64)
        level = tf.cast(_nearest_level(neg_log_abar, -2.0 * tf.math.log(alpha)), tf.int32)
        _, eps, _ = diffusion.model_predictions(model, x, level)
        std = tf.cast(tf.sqrt(-tf.math.expm1(-tf.gather(neg_log_abar, level))), x.dtype)
        return -eps / _checks.expand_to_rank(std, x.shape.rank)

    return score_fn


def score_from_sigma_model(model, sde: VESDE):
    """score_fn(x, t) of a noise-conditional score network model(x, sigma) (NCSN): the VE SDE's
    marginal at t is the data perturbed by sigma(t), so score(x, t) = model(x, sigma(t))."""

    def score_fn(x, t):
        _, std = sde.marginal(t, x.dtype)
        return model(x, std)

    return score_fn


def clip_data_prediction(score_fn, sde: SDE, low: float, high: float):
    """score_fn whose Tweedie estimate of x(0) is clipped to [low, high] (the score recomputed
    from it: -(x - alpha clip(x0)) / std^2), as DDPM's and DDIM's samplers clip pred_x0 for
    images: an undertrained network's estimates stray outside the data's range at high noise,
    and a few-step solver carries the error to the end."""

    def clipped(x, t):
        score = _checks.call_network(score_fn, x, t)
        alpha, std = sde.marginal(t, x.dtype)
        rank = x.shape.rank
        alpha, var = (
            _checks.expand_to_rank(alpha, rank),
            _checks.expand_to_rank(tf.square(std), rank),
        )
        x0 = tf.clip_by_value((x + var * score) / alpha, low, high)
        return -(x - alpha * x0) / var

    return clipped
