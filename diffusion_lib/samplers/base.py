"""What every sampler shares: the result structure, the registry, and the chain loop.

A sampler is a function that runs a Markov chain from noise to data and returns a
`SampleResult`. Samplers are registered by name with the family of network they need and the
settings a user may choose (each with its default and bounds; `SamplerSpec` validates them):

    "diffusion"   fn(model, diffusion, shape, *, seed, clip_x0, frames, strategy, **settings):
                  model(x_t, t) with integer timesteps t [B], plus a `GaussianDiffusion`
    "score"       anneals=True:  fn(score_fn, x, sigmas, *, seed, data_rms, frames, strategy,
                  **settings), score_fn(x, sigma) with sigma [B] float;
                  anneals=False: fn(score_fn, x, *, seed, frames, strategy, **settings),
                  score_fn(x) at one fixed noise level
    "sde"         fn(score_fn, sde, shape, *, x, seed, frames, strategy, **settings): score_fn(x, t)
                  with continuous t [B] float, plus a `diffusion_lib.sde.SDE`

Randomness is stateless: a sampler's `seed` (int or int [2]) is split into one seed for the
starting noise and one per chain step, so the same seed gives the same samples, bit for bit.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Collection, Mapping, Sequence

import numpy as np
import tensorflow as tf

from diffusion_lib import _checks
from diffusion_lib.samplers.known import (
    Known,
    Move,
    check_marginals,
    paste,
    resampling_schedule,
)

Progress = Callable[[int, int], None]
# How many frames (evenly spaced), which chain steps, or a function of the chain's length
# giving the steps (e.g. a GIF's spacing, denser near the end).
Frames = int | Sequence[int] | Callable[[int], Sequence[int]] | None


@dataclasses.dataclass(frozen=True)
class LevelHealth:
    """The chain at the end of one noise level: the RMS of x over the whole batch beside the RMS
    it should carry, sqrt(data_rms^2 + sigma^2). A ratio well above 1 is a chain lagging behind
    its schedule (too small a step): the network then sees noise it was never trained on."""

    sigma: float
    rms: float
    expected_rms: float

    @property
    def ratio(self) -> float:
        return self.rms / self.expected_rms


@dataclasses.dataclass(frozen=True)
class SampleResult:
    """Samples [B, ...]; with frames requested, the chain's states at those steps.

    frames: [F, B, ...] or None. frame_steps: the chain step of each frame, 0 being the starting
    noise and `num_steps` the returned samples. health: one `LevelHealth` per noise level, for
    samplers that anneal over levels (empty otherwise).
    """

    samples: tf.Tensor
    frames: tf.Tensor | None = None
    frame_steps: tuple[int, ...] = ()
    health: tuple[LevelHealth, ...] = ()
    # Network calls per sample, for samplers whose count is not fixed by their settings (the
    # adaptive ODE solver) or is worth reporting beside them; 0 where not reported.
    evaluations: int = 0


@dataclasses.dataclass(frozen=True)
class Setting:
    """One user-facing setting of a sampler: its default, and the bounds a value must keep
    (inclusive `low`/`high`; `positive` for > 0; `finite=False` admits +inf, "no bound"). The
    value's type is the default's."""

    default: int | float | bool
    low: float | None = None
    high: float | None = None
    positive: bool = False
    finite: bool = True

    def check(self, name: str, value):
        kind = type(self.default)
        if kind is bool:
            if not isinstance(value, bool | np.bool_):
                raise ValueError(f"{name} must be true or false, got {value!r}")
            return bool(value)
        if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
            raise ValueError(f"{name} must be a number, got {value!r}")
        if kind is int:
            if float(value) != int(value):
                raise ValueError(f"{name} must be an integer, got {value!r}")
            value = int(value)
        else:
            value = float(value)
        if np.isnan(value) or (not np.isfinite(value) and (self.finite or value < 0)):
            raise ValueError(f"{name} must be finite, got {value!r}")
        if self.positive and value <= 0:
            raise ValueError(f"{name} must be positive, got {value!r}")
        if self.low is not None and value < self.low:
            raise ValueError(f"{name} must be at least {self.low}, got {value!r}")
        if self.high is not None and value > self.high:
            raise ValueError(f"{name} must be at most {self.high}, got {value!r}")
        return value


@dataclasses.dataclass(frozen=True)
class SamplerInfo:
    name: str
    family: str
    fn: Callable[..., SampleResult]
    settings: Mapping[str, Setting] = dataclasses.field(default_factory=dict)
    anneals: bool = False  # score samplers: over decreasing noise levels, or at one level


SAMPLERS: dict[str, SamplerInfo] = {}
FAMILIES = ("diffusion", "score", "sde")


def register_sampler(
    name: str,
    family: str,
    *,
    settings: Mapping[str, Setting] | None = None,
    anneals: bool = False,
) -> Callable:
    """Decorator adding a sampler function to the registry under `name`; `settings` are the
    keyword arguments a user chooses (see `SamplerSpec`)."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    if anneals and family != "score":
        raise ValueError("only score samplers anneal over noise levels")

    def add(fn: Callable[..., SampleResult]) -> Callable[..., SampleResult]:
        if name in SAMPLERS:
            raise ValueError(f"sampler {name!r} is already registered")
        sampler = _with_setting_defaults(name, fn, dict(settings or {}))
        SAMPLERS[name] = SamplerInfo(name, family, sampler, dict(settings or {}), anneals)
        return sampler

    return add


def _with_setting_defaults(name: str, fn: Callable, settings: Mapping[str, Setting]) -> Callable:
    """`fn` with its settings' defaults taken from their `Setting`s, the one place they are
    stated: each setting is a keyword-only parameter declared without a default (or is passed
    on through **kwargs), and the returned function fills in those left out and shows them in
    its signature. A function that gives a setting a default of its own, or takes it by
    position, is refused here, so the two can never disagree."""
    signature = inspect.signature(fn)
    params = dict(signature.parameters)
    rest = next((p for p in params.values() if p.kind is p.VAR_KEYWORD), None)
    for key in settings:
        param = params.get(key)
        if param is None and rest is not None:
            continue
        if param is None or param.kind is not param.KEYWORD_ONLY:
            raise TypeError(
                f"sampler {name!r}: setting {key!r} must be a keyword-only parameter of "
                f"{fn.__name__}"
            )
        if param.default is not param.empty:
            raise TypeError(
                f"sampler {name!r}: {fn.__name__} gives setting {key!r} a default of its own "
                f"({param.default!r}); its Setting's ({settings[key].default!r}) is the only one"
            )
    defaults = {key: setting.default for key, setting in settings.items()}

    @functools.wraps(fn)
    def sampler(*args, **kwargs):
        return fn(*args, **{**defaults, **kwargs})

    shown = [p.replace(default=defaults[k]) if k in defaults else p for k, p in params.items()]
    passed_on = [
        inspect.Parameter(key, inspect.Parameter.KEYWORD_ONLY, default=default)
        for key, default in defaults.items()
        if key not in params
    ]
    if passed_on:  # before **kwargs, where keyword-only parameters stand
        shown = shown[:-1] + passed_on + shown[-1:]
    sampler.__signature__ = signature.replace(parameters=shown)
    return sampler


def get_sampler(name: str) -> SamplerInfo:
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"sampler must be one of {sorted(SAMPLERS)}, got {name!r}") from None


def frame_indices(frames: Frames, num_steps: int) -> tuple[int, ...]:
    """Chain steps to record: an int asks for that many, evenly spaced from noise to samples; a
    function gets the chain's length and returns the steps."""
    if frames is None:
        return ()
    if callable(frames):
        frames = frames(num_steps)
    if isinstance(frames, int | np.integer) and not isinstance(frames, bool):
        if frames < 2:
            raise ValueError(f"frames must be at least 2 (noise and samples), got {frames}")
        return tuple(sorted({int(round(v)) for v in np.linspace(0, num_steps, int(frames))}))
    steps = tuple(sorted({int(s) for s in frames}))
    if not steps or steps[0] < 0 or steps[-1] > num_steps:
        raise ValueError(f"frames must be chain steps in [0, {num_steps}], got {list(frames)}")
    return steps


def split_seed(seed) -> tuple[tf.Tensor, tf.Tensor]:
    """(seed for the starting noise, seed for the chain's steps)."""
    seeds = tf.random.experimental.stateless_split(_checks.seed_tensor(seed), num=2)
    return seeds[0], seeds[1]


def initial_state(x, shape, seed: tf.Tensor, dtype, name: str) -> tf.Tensor:
    """The chain's starting point: `x` if given (checked), else N(0, I) of `shape`."""
    if x is not None:
        x = _checks.as_float_tensor(x, name)
        _checks.check_batched(x, name)
        return _checks.check_finite(x, name)
    if shape is None:
        raise ValueError(f"give either shape or {name}")
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2 or any(s <= 0 for s in shape):
        raise ValueError(f"shape must be [B, ...] with positive sizes and rank >= 2, got {shape}")
    return tf.random.stateless_normal(shape, seed, dtype=dtype)


def score_table_step(score_fn: Callable, sigmas, drifts, spreads) -> Callable:
    """The step x <- x + drift[i] * score_fn(x, sigma[i]) + spread[i] * z of a noise-level
    sampler, from per-step tables (float64, cast to x's dtype), as a `tf.function` of
    (x, i, seed) for `run_chain`. Annealed Langevin and ancestral sampling are both this update
    with different tables."""
    sigma_table = tf.constant(np.asarray(sigmas, np.float64))
    drift_table = tf.constant(np.asarray(drifts, np.float64))
    spread_table = tf.constant(np.asarray(spreads, np.float64))

    @tf.function(autograph=False)
    def step(x_k, i, step_seed):
        dt = x_k.dtype
        sigma = tf.fill([tf.shape(x_k)[0]], tf.cast(sigma_table[i], dt))
        score = _checks.call_network(score_fn, x_k, sigma)
        z = tf.random.stateless_normal(tf.shape(x_k), step_seed, dtype=dt)
        return x_k + tf.cast(drift_table[i], dt) * score + tf.cast(spread_table[i], dt) * z

    return step


def level_health_watch(
    carries: Mapping[int, float], data_rms: float
) -> tuple[list[LevelHealth], Callable[[int, tf.Tensor], None]]:
    """(health, watch) for `run_chain`: after chain step k in `carries`, watch(k, x) appends the
    chain's RMS beside sqrt(data_rms^2 + sigma^2), sigma = carries[k] the noise it should carry."""
    health: list[LevelHealth] = []

    def watch(done: int, x_now: tf.Tensor) -> None:
        sigma = carries[done]
        rms = float(tf.sqrt(tf.reduce_mean(tf.square(tf.cast(x_now, tf.float64)))))
        health.append(LevelHealth(sigma, rms, float(np.hypot(data_rms, sigma))))

    return health, watch


def run_chain(
    step: Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tf.Tensor],
    x: tf.Tensor,
    num_steps: int,
    chain_seed: tf.Tensor,
    frames: Frames = None,
    progress: Progress | None = None,
    strategy: tf.distribute.Strategy | None = None,
    *,
    watch: Callable[[int, tf.Tensor], None] | None = None,
    watch_at: Collection[int] = (),
    sample_of: Callable | None = None,
    known: Known | None = None,
    marginals: tuple[np.ndarray, np.ndarray] | None = None,
) -> SampleResult:
    """Applies x <- step(x, i, seed_i) for i = 0..num_steps-1, recording requested frames.

    `watch(k, x)` is called with the whole batch after step k for each k in `watch_at`.
    The chain's state may be a tuple of tensors, each [B, ...] (a multistep solver carries its
    previous predictions); `sample_of(state)` then picks the samples out of it.

    With `known` entries (see `samplers.known`), the chain's `marginals` (alpha, std at each of
    its num_steps + 1 positions) re-noise them after every step, and the chain follows
    `resampling_schedule`; frames, `watch` and `progress` see each position's last visit.

    `step` should be a `tf.function(autograph=False)`; i is an int32 scalar tensor, so it traces
    once. A step branches on a tensor with `tf.cond` (autograph would write each converted
    function's source to a temporary file that a process ended by a signal leaves behind).
    With a `strategy`, the batch is split evenly over its replicas and every step runs on all of
    them at once; each replica folds its id into the step seed, so the samples are a function of
    (seed, replica count).
    """
    wanted = frame_indices(frames, num_steps)
    moves = [Move(True, step=i) for i in range(num_steps)]
    lift = None
    if known is not None:
        if marginals is None:
            raise ValueError("this sampler cannot take known entries (it gives no marginals)")
        if sample_of is not None:
            raise ValueError("a multistep sampler cannot take known entries")
        known.check_fits(tf.nest.flatten(x)[0].shape)
        step, lift, x = _known_chain(
            step, x, known, check_marginals(marginals, num_steps), chain_seed
        )
        sample_of = lambda state: state[0]  # noqa: E731
        moves = resampling_schedule(num_steps, known.jump_length, known.resamplings)
    advance, gather = step, lambda v: v
    if strategy is not None:
        replicas = strategy.num_replicas_in_sync
        batch = int(tf.nest.flatten(x)[0].shape[0])
        if batch % replicas:
            raise ValueError(f"batch {batch} is not divisible by {replicas} replicas")
        part = batch // replicas
        whole_state = x
        x = strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.nest.map_structure(
                lambda v: v[
                    ctx.replica_id_in_sync_group * part : (ctx.replica_id_in_sync_group + 1) * part
                ],
                whole_state,
            )
        )
        advance, lift = (_on_replicas(fn, strategy) if fn else None for fn in (step, lift))
        gather = lambda v: tf.concat(strategy.experimental_local_results(v), axis=0)  # noqa: E731
    if sample_of is not None:
        inner = gather
        gather = lambda v: inner(sample_of(v))  # noqa: E731
    # Each position's last visit (the plain chain visits each once).
    last = {move.step + 1: k for k, move in enumerate(moves) if move.down}
    recorded = {0: gather(x)} if 0 in wanted else {}
    downs = sum(move.down for move in moves)
    done = 0
    for k, move in enumerate(moves):
        if move.down:
            i_tensor = tf.constant(move.step, tf.int32)
            seed = tf.random.experimental.stateless_fold_in(chain_seed, i_tensor)
            if move.visit:
                seed = tf.random.experimental.stateless_fold_in(seed, move.visit)
            x = advance(x, i_tensor, seed)
            done += 1
        else:
            seed = tf.random.experimental.stateless_fold_in(chain_seed, num_steps + 1 + move.start)
            seed = tf.random.experimental.stateless_fold_in(seed, move.visit)
            x = lift(x, tf.constant(move.start, tf.int32), tf.constant(move.end, tf.int32), seed)
        reached = move.step + 1
        if move.down and last[reached] == k:
            record, look = reached in wanted, watch is not None and reached in watch_at
            if record or look:
                whole = gather(x)  # once, for both
                if record:
                    recorded[reached] = whole
                if look:
                    watch(reached, whole)
        if progress is not None and move.down:
            progress(done, downs)
    samples = paste(gather(x), known)
    if num_steps in recorded:  # the last frame is the samples
        recorded[num_steps] = samples
    stacked = tf.stack([recorded[p] for p in sorted(recorded)], axis=0) if recorded else None
    return SampleResult(samples=samples, frames=stacked, frame_steps=wanted)


def _on_replicas(fn: Callable, strategy: tf.distribute.Strategy) -> Callable:
    """fn(state, *args, seed) run on every replica's part of a distributed state, each replica
    folding its id into the seed."""

    def replica_fn(state, *args):
        *rest, seed = args
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        return fn(state, *rest, tf.random.experimental.stateless_fold_in(seed, replica))

    return tf.function(
        lambda state, *args: strategy.run(replica_fn, args=(state, *args)), autograph=False
    )


# Folded into a step's seed for the draw that re-noises the known entries.
_KNOWN_NOISE = 7919


def _known_chain(step: Callable, x: tf.Tensor, known: Known, marginals, chain_seed: tf.Tensor):
    """(step, lift, state) of a chain whose state is (x, values, mask): step runs the sampler's
    step on x and then puts the known entries back at their marginal of the position reached;
    lift noises the state up from one position to a noisier one. The starting state has the
    known entries at position 0's marginal."""
    alpha_np, std_np = marginals
    alpha, std = tf.constant(alpha_np), tf.constant(std_np)
    dtype = x.dtype
    values = tf.cast(known.values, dtype)
    mask = tf.broadcast_to(tf.cast(known.mask, dtype), tf.shape(x))

    def settle(x_p, values_p, mask_p, p, seed):
        dt = x_p.dtype
        z = tf.random.stateless_normal(tf.shape(x_p), seed, dtype=dt)
        noised = tf.cast(alpha[p], dt) * values_p + tf.cast(std[p], dt) * z
        return tf.where(mask_p > 0.5, noised, x_p)

    @tf.function(autograph=False)
    def known_step(state, i, seed):
        x_i, values_i, mask_i = state
        x_next = step(x_i, i, seed)
        noise_seed = tf.random.experimental.stateless_fold_in(seed, _KNOWN_NOISE)
        return settle(x_next, values_i, mask_i, i + 1, noise_seed), values_i, mask_i

    @tf.function(autograph=False)
    def lift(state, start, end, seed):
        x_s, values_s, mask_s = state
        dt = x_s.dtype
        ratio = alpha[end] / alpha[start]
        spread = tf.sqrt(tf.maximum(tf.square(std[end]) - tf.square(ratio * std[start]), 0.0))
        z = tf.random.stateless_normal(tf.shape(x_s), seed, dtype=dt)
        return tf.cast(ratio, dt) * x_s + tf.cast(spread, dt) * z, values_s, mask_s

    start_seed = tf.random.experimental.stateless_fold_in(_checks.seed_tensor(0), _KNOWN_NOISE)
    # The start's known entries from a seed of their own: the chain's seeds stay as they are.
    x0 = settle(x, values, mask, 0, start_seed)
    return known_step, lift, (x0, values, mask)
