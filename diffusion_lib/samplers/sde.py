"""Samplers of a score SDE (`diffusion_lib.sde`): predictor-corrector sampling of the reverse SDE
(Song et al. 2021, sec. 4.2 and appendix G), and DPM-Solver++ (Lu et al. 2022) on the
probability-flow ODE. The adaptive ODE solver is in `samplers/ode.py`.

All take score_fn(x, t), the score of p_t with t a float tensor [B] in x's dtype, and the `SDE`:

    fn(score_fn, sde, shape=None, *, x=None, seed, frames, progress, strategy, **settings)

Predictors (one network call a step), each an update x <- a_k x + b_k s(x, tau_k) + c_k z from
per-step tables:

    sde_euler_maruyama   the reverse SDE on the uniform grid T = t_0 > ... > t_K = eps:
                         x <- x - [f - g^2 s] dt + g sqrt(dt) z,  dt = t_k - t_{k+1}
    sde_reverse_diffusion    the forward chain's discretisation run backwards (score_sde's
                         "reverse diffusion"): x <- x - f_i + G_i^2 s + G_i z, with the discrete
                         chain's f_i, G_i (VP: f_i = (sqrt(1 - beta_i) - 1) x, G_i = sqrt(beta_i);
                         VE: f_i = 0, G_i^2 = sigma_i^2 - sigma_{i-1}^2)
    sde_ancestral        sampling the discrete chain's posterior at Tweedie's estimate. On the
                         whole VP chain it is DDPM's ancestral sampler with variance beta_t, on the
                         whole VE chain NCSN's ancestral sampler (`ve_ancestral`), step for step.

The discrete samplers run on `num_steps` levels of the SDE's N-level chain (0: all N), evenly
spaced, with each step the chain's exact transition between the two levels it joins (DDPM's
respacing). The last step adds no noise.

Corrector: `corrector_steps` Langevin steps before each predictor step, at the predictor's time,
with the step size set by the signal-to-noise ratio `snr` (Song et al. 2021, Algorithm 5):
eps = 2 r (snr ||z|| / ||s||)^2 with r = 1 - beta_i on VP chains and 1 on VE, then
x <- x + eps s + sqrt(2 eps) z. The norms are the batch's (per replica) means, as in the
paper: a per-example ratio explodes where an example's score nearly vanishes (measured on 2-D
Gaussian data: covariance 0.5 -> 11.9). So a corrected sample depends on the rest of its
batch, and on how the batch is split over devices.

`denoise` ends with Tweedie's formula at the last time, x0 = (x + std^2 s) / alpha: one more
network call, and the noise left at eps (std 0.01 at VP's 1e-3) is taken out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from diffusion_lib import _checks
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
from diffusion_lib.samplers.known import Known, paste
from diffusion_lib.sde import SDE, VESDE, SubVPSDE, data_prediction, discrete_times

ScoreFn = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]

_EPS = Setting(0.0, low=0.0, high=0.5)  # 0: the SDE's default_eps
_CORRECTOR = {
    "corrector_steps": Setting(0, low=0),
    "snr": Setting(0.16, positive=True, high=10.0),
}


@dataclasses.dataclass(frozen=True)
class PredictorTables:
    """x <- scale[k] x + drift[k] s(x, times[k]) + spread[k] z for k = 0..K-1 (float64)."""

    times: np.ndarray
    scale: np.ndarray
    drift: np.ndarray
    spread: np.ndarray
    # The Langevin corrector's r at each step (1 - beta on VP chains, 1 on VE).
    corrector_ratio: np.ndarray
    final_time: float  # where `denoise` applies Tweedie's formula
    # (alpha, std) of the marginal at each of the K + 1 positions the chain visits (None: the
    # chain cannot take known entries).
    marginals: tuple[np.ndarray, np.ndarray] | None = None


def _eps(sde: SDE, eps: float) -> float:
    return sde.default_eps if eps == 0.0 else float(eps)


def euler_maruyama_tables(sde: SDE, num_steps: int, eps: float = 0.0) -> PredictorTables:
    """The reverse SDE's Euler-Maruyama steps on the uniform grid from T to eps. Every SDE here
    has f = d(t) x, so x - [d x - g^2 s] dt = (1 - d dt) x + g^2 dt s."""
    grid = sde.time_grid(num_steps, _eps(sde, eps))
    now, dt = grid[:-1], grid[:-1] - grid[1:]
    d = sde._drift_coeff(tf.constant(now)).numpy()
    g2 = np.square(sde.diffusion(now).numpy())
    spread = np.sqrt(g2 * dt)
    spread[-1] = 0.0
    if isinstance(sde, VESDE):
        ratio = np.ones_like(now)
    else:
        ratio = 1.0 - (sde.beta_min + now * (sde.beta_max - sde.beta_min)) / sde.N
    alpha, std = (v.numpy() for v in sde.marginal(grid))
    return PredictorTables(now, 1.0 - d * dt, g2 * dt, spread, ratio, float(grid[-1]), (alpha, std))


def chain_levels(sde: SDE, num_steps: int) -> np.ndarray:
    """The levels (indices into the SDE's discrete chain) a discrete sampler visits, from the
    noisiest down: all N for num_steps 0, else num_steps evenly spaced, N - 1 first, 0 last."""
    n = sde.N
    if num_steps == 0 or num_steps == n:
        return np.arange(n - 1, -1, -1)
    if not 1 <= num_steps <= n:
        raise ValueError(f"num_steps must be in [1, {n}] (or 0 for all), got {num_steps}")
    return np.unique(np.round(np.linspace(0, n - 1, num_steps)).astype(np.int64))[::-1]


def discrete_tables(sde: SDE, num_steps: int, kind: str) -> PredictorTables:
    """Tables of the ancestral ("ancestral") or reverse-diffusion ("reverse_diffusion") predictor
    over `chain_levels(sde, num_steps)`."""
    if isinstance(sde, SubVPSDE):
        raise ValueError(
            "the sub-VP SDE is not the limit of a discrete chain: sample it with "
            "sde_euler_maruyama, pf_ode or dpm_solver_pp"
        )
    levels = chain_levels(sde, num_steps)
    times = discrete_times(sde)[levels]
    chain = sde.discrete_chain()
    if "sigmas" in chain:
        var_now = chain["sigmas"][levels] ** 2
        var_next = np.append(var_now[1:], 0.0)  # the last step goes to the data
        jump = var_now - var_next
        scale, drift = np.ones_like(jump), jump
        if kind == "ancestral":
            spread = np.sqrt(var_next * jump / var_now)
        else:
            spread = np.sqrt(jump)
        ratio = np.ones_like(jump)
        marginals = (np.ones(len(levels) + 1), np.sqrt(np.append(var_now, 0.0)))
    else:
        abar = np.cumprod(1.0 - chain["betas"])
        abar_now = abar[levels]
        abar_next = np.append(abar_now[1:], 1.0)
        beta = 1.0 - abar_now / abar_next  # the transition from the next level to this one
        if kind == "ancestral":
            scale = 1.0 / np.sqrt(1.0 - beta)
            drift = beta / np.sqrt(1.0 - beta)
        else:
            scale = 2.0 - np.sqrt(1.0 - beta)
            drift = beta
        spread = np.sqrt(beta)
        ratio = 1.0 - beta
        at = np.append(abar_now, 1.0)
        marginals = (np.sqrt(at), np.sqrt(1.0 - at))
    spread = spread.copy()
    spread[-1] = 0.0
    # The last step goes to the data: its position's marginal is x_0 itself.
    return PredictorTables(times, scale, drift, spread, ratio, float(times[-1]), marginals)


def _score_at(score_fn: ScoreFn, x: tf.Tensor, t: tf.Tensor) -> tf.Tensor:
    return _checks.call_network(score_fn, x, tf.fill([tf.shape(x)[0]], tf.cast(t, x.dtype)))


def _mean_norm(v: tf.Tensor) -> tf.Tensor:
    """The batch's mean of the per-example L2 norms."""
    per_example = tf.reduce_sum(tf.reshape(tf.square(v), [tf.shape(v)[0], -1]), axis=1)
    return tf.reduce_mean(tf.sqrt(per_example))


def pc_step(score_fn: ScoreFn, tables: PredictorTables, corrector_steps: int, snr: float):
    """The `run_chain` step: `corrector_steps` Langevin steps, then the predictor."""
    table = {
        name: tf.constant(np.asarray(getattr(tables, name), np.float64))
        for name in ("times", "scale", "drift", "spread", "corrector_ratio")
    }

    @tf.function(autograph=False)
    def step(x, i, step_seed):
        dt = x.dtype
        t = tf.cast(table["times"][i], dt)
        for j in range(corrector_steps):
            score = _score_at(score_fn, x, t)
            corrector_seed = tf.random.experimental.stateless_fold_in(step_seed, j + 1)
            z = tf.random.stateless_normal(tf.shape(x), corrector_seed, dtype=dt)
            ratio = tf.cast(table["corrector_ratio"][i], dt)
            signal = tf.maximum(_mean_norm(score), 1e-12)
            size = 2.0 * ratio * tf.square(snr * _mean_norm(z) / signal)
            x = x + size * score + tf.sqrt(2.0 * size) * z
        score = _score_at(score_fn, x, t)
        # The predictor's noise from the step's own seed, as DDPM's and NCSN's samplers draw it.
        z = tf.random.stateless_normal(tf.shape(x), step_seed, dtype=dt)
        return (
            tf.cast(table["scale"][i], dt) * x
            + tf.cast(table["drift"][i], dt) * score
            + tf.cast(table["spread"][i], dt) * z
        )

    return step


def _start(sde: SDE, x, shape, seed, dtype) -> tuple[tf.Tensor, tf.Tensor]:
    init_seed, chain_seed = split_seed(seed)
    if x is None:
        if shape is None:
            raise ValueError("give either shape or x")
        x = initial_state(None, shape, init_seed, dtype, "x") * sde.prior_std
    else:
        x = initial_state(x, None, None, None, "x")
    return x, chain_seed


def denoise(score_fn: ScoreFn, sde: SDE, x: tf.Tensor, t: float, strategy=None) -> tf.Tensor:
    """Tweedie's formula at time t: E[x(0) | x(t) = x] = (x + std(t)^2 s(x, t)) / alpha(t)."""

    @tf.function(autograph=False)
    def one(x_r):
        tt = tf.fill([tf.shape(x_r)[0]], tf.constant(t, x_r.dtype))
        return data_prediction(sde, _checks.call_network(score_fn, x_r, tt), x_r, tt)

    return batch_mapper(one, strategy)(x)


def batch_mapper(fn: Callable[..., tf.Tensor], strategy=None) -> Callable[..., tf.Tensor]:
    """x, *args -> fn(x, *args) with the batch x split evenly over a strategy's replicas and
    gathered back in order (fn itself without one). fn should be a `tf.function`: the mapper
    is made once and called at every step of a solver, so fn traces once."""
    if strategy is None:
        return fn
    replicas = strategy.num_replicas_in_sync

    def mapped(x, *args):
        part = int(x.shape[0]) // replicas
        if part * replicas != int(x.shape[0]):
            raise ValueError(f"batch {int(x.shape[0])} is not divisible by {replicas} replicas")
        values = strategy.experimental_distribute_values_from_function(
            lambda ctx: x[
                ctx.replica_id_in_sync_group * part : (ctx.replica_id_in_sync_group + 1) * part
            ]
        )
        out = strategy.run(fn, args=(values, *args))
        return tf.concat(strategy.experimental_local_results(out), axis=0)

    return mapped


def _run_predictor(
    tables: PredictorTables,
    score_fn: ScoreFn,
    sde: SDE,
    shape,
    *,
    x,
    seed,
    frames: Frames,
    progress: Progress | None,
    strategy,
    dtype,
    corrector_steps: int,
    snr: float,
    denoise_last: bool,
    known: Known | None = None,
) -> SampleResult:
    x, chain_seed = _start(sde, x, shape, seed, dtype)
    step = pc_step(score_fn, tables, corrector_steps, snr)
    result = run_chain(
        step, x, len(tables.times), chain_seed, frames, progress, strategy,
        known=known, marginals=tables.marginals,
    )  # fmt: skip
    # Network calls per sample: the predictor's one a step and the corrector's, and Tweedie's.
    calls = len(tables.times) * (1 + corrector_steps)
    if not denoise_last:
        return dataclasses.replace(result, evaluations=calls)
    result = denoise_result(result, score_fn, sde, tables.final_time, strategy, len(tables.times))
    if known is not None:  # Tweedie's formula moved the known entries too
        result = dataclasses.replace(result, samples=paste(result.samples, known))
        if result.frames is not None and result.frame_steps[-1] == len(tables.times):
            frames = tf.concat([result.frames[:-1], result.samples[None]], axis=0)
            result = dataclasses.replace(result, frames=frames)
    return dataclasses.replace(result, evaluations=calls + 1)


def denoise_result(
    result: SampleResult, score_fn, sde: SDE, t: float, strategy, last_step: int
) -> SampleResult:
    """Tweedie's formula at t on the samples, and on the last frame when it is the samples."""
    samples = denoise(score_fn, sde, result.samples, t, strategy)
    frames = result.frames
    if frames is not None and result.frame_steps[-1] == last_step:
        frames = tf.concat([frames[:-1], samples[None]], axis=0)
    return dataclasses.replace(result, samples=samples, frames=frames)


_PREDICTOR_SETTINGS = {**_CORRECTOR, "denoise": Setting(False)}


def _predictor_sampler(tables_of: Callable[..., PredictorTables], doc: str):
    """A registered sampler's function: the predictor whose tables `tables_of(sde, **grid)`
    builds from the sampler's own grid settings, with the Langevin corrector and `denoise`."""

    def sample(
        score_fn: ScoreFn,
        sde: SDE,
        shape: Sequence[int] | None = None,
        *,
        x=None,
        seed,
        corrector_steps: int,
        snr: float,
        denoise: bool,
        frames: Frames = None,
        progress: Progress | None = None,
        strategy: tf.distribute.Strategy | None = None,
        dtype: tf.DType = tf.float32,
        known: Known | None = None,
        **grid,
    ) -> SampleResult:
        return _run_predictor(
            tables_of(sde, **grid), score_fn, sde, shape, x=x, seed=seed, frames=frames,
            progress=progress, strategy=strategy, dtype=dtype, corrector_steps=corrector_steps,
            snr=snr, denoise_last=denoise, known=known,
        )  # fmt: skip

    sample.__doc__ = doc
    return sample


def _euler_maruyama_grid(sde: SDE, num_steps: int, eps: float) -> PredictorTables:
    return euler_maruyama_tables(sde, _checks.positive_int(num_steps, "num_steps"), eps)


euler_maruyama_sample = register_sampler(
    "sde_euler_maruyama",
    family="sde",
    settings={"num_steps": Setting(1000, low=1), "eps": _EPS, **_PREDICTOR_SETTINGS},
)(
    _predictor_sampler(
        _euler_maruyama_grid,
        "The reverse SDE by Euler-Maruyama from x(T) ~ prior (or `x`) to t = eps (0: the SDE's "
        "default) in `num_steps`; with corrector_steps > 0, predictor-corrector sampling.",
    )
)
_DISCRETE_SETTINGS = {"num_steps": Setting(0, low=0), **_PREDICTOR_SETTINGS}
ancestral_sample, reverse_diffusion_sample = (
    register_sampler(f"sde_{kind}", family="sde", settings=_DISCRETE_SETTINGS)(
        _predictor_sampler(
            lambda sde, num_steps, kind=kind: discrete_tables(sde, num_steps, kind),
            f"The {kind.replace('_', ' ')} predictor over `num_steps` levels of the SDE's "
            "discrete chain (0: all N); with corrector_steps > 0, predictor-corrector sampling.",
        )
    )
    for kind in ("ancestral", "reverse_diffusion")
)
