"""Drawing samples from a restored run: the one function evaluation, sample sets and the
sampling GIF all use.

    draw(restored, spec, n, seed, *, frames=None, strategy=None, data_rms=1.0) -> Drawn
    draw_chunk(restored, spec, n=..., chunk_rows=..., index=..., seed=...)   # rows of a set
                                                    # (chunk 0 with its chain: the preview)
    draw_set(restored, spec, n=..., chunk_rows=..., seed=...)                # all of a set

The sampler must serve the family the run's objective declares (`objective.family`, the
registry's `SamplerInfo.family`): "diffusion" samplers get the objective's GaussianDiffusion,
x0 clipped to [-1, 1] for images; annealing "score" samplers get its noise levels and start from
N(0, sigma_1^2 I); plain Langevin runs at the objective's smallest level from N(0, I). "sde"
samplers get the objective's `sde_view`: the SDE it trains, or the one a DDPM (VP) or NCSN (VE)
network is exactly a score model of, and start from that SDE's prior; for images the score's
estimate of x(0) is clipped to [-1, 1], as for "diffusion" samplers. Samples
and frames come back in data units (uint8 images, points in the data's coordinates) through the
run's `Normalizer`; chain health (annealing samplers) in model units.

A class-conditional run (config `num_classes` K > 0) is drawn class-balanced: row r of a draw
carries label r mod K (per replica, with a strategy), so a chunk of 10 k rows holds k of each
digit, and the sampler spec's `guidance` w turns the network into (1 + w) * conditional - w *
unconditional (classifier-free guidance; both halves in one call of twice the batch), at the
steps whose noise level lies in the spec's `guidance_interval` (all of them by default).

A set of n samples is drawn in chunks of `chunk_rows`, chunk i from seed [seed, i], so any chunk
can be redrawn alone, bit for bit, and memory holds one chunk. With a `strategy` (several local
GPUs) each chunk is split over its replicas (padded to a multiple of their number).

Chunks are remembered in this process (up to MEMO_BYTES, least recently used first out) by what
decides them: the checkpoint's identity, the sampler spec, the chunk's size and seed, the
replica count. An evaluation and a sample set that ask for the same chunk (the same sampler, n
within one chunk, the same seed) draw it once; remembered arrays are read-only.
"""

from __future__ import annotations

import collections
import dataclasses
import inspect
import threading
from collections.abc import Callable, Iterator

import numpy as np
import tensorflow as tf

from diffusion_lib import _checks
from diffusion_lib._checks import seed_tensor
from diffusion_lib.render import gif_frame_steps
from diffusion_lib.samplers import SAMPLERS, Frames, Known, LevelHealth, SamplerSpec
from diffusion_lib.samplers.base import Progress
from diffusion_lib.sde import clip_data_prediction, data_prediction

MEMO_BYTES = 256 * 2**20
# The chain steps a set's first chunk keeps (its preview: the sampling GIF's frames), spaced
# more densely towards the end of the chain, where the samples take shape.
PREVIEW_FRAMES = 16


def preview_steps(length: int) -> list[int]:
    """The steps of a chain of `length` steps kept in a set's preview."""
    return gif_frame_steps(length, PREVIEW_FRAMES)


_memo: collections.OrderedDict = collections.OrderedDict()
_memo_lock = threading.Lock()


def clear_memo() -> None:
    with _memo_lock:
        _memo.clear()


class SamplerMismatch(ValueError):
    """The sampler does not fit the run (another family, or settings the run cannot take)."""


@dataclasses.dataclass(frozen=True)
class Drawn:
    """samples [n, ...] and frames [F, n, ...] (or None) in data units; health per noise level."""

    samples: np.ndarray
    frames: np.ndarray | None = None
    health: tuple[LevelHealth, ...] = ()
    evaluations: int = 0  # network calls per sample, where the sampler reports them


@dataclasses.dataclass(frozen=True)
class Given:
    """What is known of each of n samples, in data units (uint8 images, points in the data's
    coordinates): `values` [n, ...] where `mask` ([n, ...] or one example's [...], True given)
    holds. A class-conditional run is drawn with its unconditional model, or with `label` for
    every row. `jump_length` and `resamplings` are RePaint's (`samplers.known`; resamplings 1:
    the replacement method alone)."""

    values: np.ndarray
    mask: np.ndarray
    label: int | None = None
    jump_length: int = 10
    resamplings: int = 1
    # Reconstruction guidance (a DPS-like pull of the network's estimate of x_0 towards the
    # given entries, `reconstruction_guided`): its weight, 0 for none. Diffusion runs only.
    reconstruction: float = 0.0


def _reconstruction_pull(x, predict, values, mask):
    """(output, grad_x ||mask (values - x0_hat(x))||) of `predict`(x) -> (output, x0_hat): the
    network's output and its estimate of x(0), the gradient summed over the batch's rows."""
    with tf.GradientTape() as tape:
        tape.watch(x)
        output, pred_x0 = predict(x)
        residual = tf.cast(mask, x.dtype) * (tf.cast(values, x.dtype) - pred_x0)
        axes = list(range(1, len(x.shape)))
        total = tf.reduce_sum(tf.sqrt(tf.reduce_sum(tf.square(residual), axis=axes) + 1e-12))
    return output, tf.stop_gradient(tape.gradient(total, x))


# The sampler families reconstruction guidance corrects: DDPM's noise prediction
# (`reconstruction_guided`) and the score-SDE samplers' score (`reconstruction_guided_score`).
RECONSTRUCTION_FAMILIES = ("diffusion", "sde")


def reconstruction_guided(model, diffusion, values: tf.Tensor, mask: tf.Tensor, weight: float):
    """model(x_t, t) of a noise-predicting DDPM whose prediction is corrected towards agreeing
    with the given entries (Chung et al. 2023, DPS; Ho et al. 2022's reconstruction guidance):
    the score gains -weight * grad_x ||mask (values - x0_hat(x_t))||, the gradient of the
    distance between the given entries and the network's estimate of x_0, so

        eps' = eps + weight sqrt(1 - abar_t) grad_x ||mask (values - x0_hat)||

    One backward pass through the network a call. `values`, `mask` are the chain's batch."""
    if diffusion.model_mean_type.value != "eps":
        raise SamplerMismatch("reconstruction guidance needs a network that predicts the noise")
    channels = int(values.shape[-1])

    def guided(x, t, **kw):
        def predict(x):
            output = model(x, t, **kw)
            eps = tf.cast(output[..., :channels], x.dtype)
            return output, diffusion.predict_x0_from_eps(x, t, eps)

        output, pull = _reconstruction_pull(x, predict, values, mask)
        eps = tf.cast(output[..., :channels], x.dtype)
        scale = tf.sqrt(1.0 - diffusion._extract("alphas_cumprod", t, x))
        corrected = eps + weight * scale * pull
        return tf.concat([tf.cast(corrected, output.dtype), output[..., channels:]], -1)

    return guided


def reconstruction_guided_score(score_fn, sde, values: tf.Tensor, mask: tf.Tensor, weight: float):
    """score_fn(x, t) of a score SDE's model corrected as `reconstruction_guided` corrects a
    DDPM's: with Tweedie's estimate x0_hat = (x + std^2 s) / alpha,

        s' = s - weight grad_x ||mask (values - x0_hat(x))||

    One backward pass through the network a call. `values`, `mask` are the chain's batch."""

    def guided(x, t):
        def predict(x):
            score = _checks.call_network(score_fn, x, t)
            return score, data_prediction(sde, score, x, t)

        score, pull = _reconstruction_pull(x, predict, values, mask)
        return score - weight * pull

    return guided


def fills_in(spec: SamplerSpec) -> bool:
    """Whether the sampler can draw with given entries (it takes `known`)."""
    return "known" in inspect.signature(spec.info.fn).parameters


def check_compatible(spec: SamplerSpec, objective) -> None:
    """Raises SamplerMismatch unless `spec` can sample a run trained with `objective`."""
    family = getattr(type(objective), "family", None)
    if family is None:
        raise SamplerMismatch(f"objective {type(objective).__name__} declares no sampler family")
    config = getattr(objective, "config", None)  # None: an objective made without a config
    if spec.guidance and not (config is not None and config.network.num_classes):
        raise SamplerMismatch(
            f"guidance={spec.guidance} needs a class-conditional run (num_classes > 0); this run "
            "is unconditional"
        )
    if spec.guidance and not config.network.label_dropout:
        raise SamplerMismatch(
            f"guidance={spec.guidance} needs the unconditional model, which this run never "
            "trained (label_dropout 0)"
        )
    if spec.family == "sde" and family != "sde":
        view = getattr(objective, "sde_view", None)
        if view is None:
            raise SamplerMismatch(
                f"sampler {spec.name!r} needs a score SDE; {type(objective).__name__} is not the "
                "discretisation of one"
            )
        try:
            view(None)  # the SDE only: no network is called here
        except ValueError as err:
            raise SamplerMismatch(f"sampler {spec.name!r}: {err}") from None
        return
    if spec.family != family:
        raise SamplerMismatch(
            f"sampler {spec.name!r} needs a {spec.family} model; this run trains a {family} "
            f"model ({type(objective).__name__})"
        )
    if spec.name == "ddim":
        steps, total = spec.get("num_steps"), objective.diffusion.num_timesteps
        if steps > total:
            raise SamplerMismatch(f"num_steps must be in [1, {total}] for DDIM, got {steps}")


def class_guided(
    model,
    num_classes: int,
    guidance: float,
    channels: int,
    *,
    interval: tuple[float, float] = (0.0, float("inf")),
    noise_level: Callable[[tf.Tensor], tf.Tensor] | None = None,
    label: int | None = None,
):
    """model(x, cond, **kw) of a class-conditional network as an unconditional-looking one: row r
    gets label r mod `num_classes` (every row `label` if given; `num_classes`, the null label,
    is the unconditional model); with `guidance` w > 0 the output's first `channels` channels
    (the prediction; a learned variance stays conditional) are (1 + w) c - w u, c and u the
    conditional and the null-label outputs, computed in one call of twice the batch.

    With an `interval` (sigma_min, sigma_max) other than (0, inf), a call is guided only when
    `noise_level(cond)` (the objective's) of its first row lies in it; otherwise it is the
    conditional call alone (a sampler's step has one noise level for the whole batch)."""
    w = float(guidance)
    low, high = (float(v) for v in interval)
    bounded = low > 0 or high < float("inf")
    if w and bounded and noise_level is None:
        raise ValueError("guidance limited to an interval of noise levels needs noise_level")

    if label is not None and not 0 <= int(label) <= num_classes:
        raise ValueError(f"label must be in [0, {num_classes}], got {label!r}")

    def guided(x, cond, **kw):
        n = tf.shape(x)[0]
        labels = tf.range(n) % num_classes if label is None else tf.fill([n], int(label))

        def conditional():
            return model(x, cond, labels=labels, **kw)

        def both():
            out = model(
                tf.concat([x, x], 0),
                tf.concat([cond, cond], 0),
                labels=tf.concat([labels, tf.fill([n], num_classes)], 0),
                **kw,
            )
            c, u = out[:n], out[n:]
            prediction = c[..., :channels] + w * (c[..., :channels] - u[..., :channels])
            return tf.concat([prediction, c[..., channels:]], -1)

        if not w:
            return conditional()
        if not bounded:
            return both()
        sigma = noise_level(tf.reshape(cond, [-1])[:1])[0]
        return tf.cond((sigma >= low) & (sigma <= high), both, conditional)

    return guided


def draw(
    restored,
    spec: SamplerSpec,
    n: int,
    seed,
    *,
    frames: Frames = None,
    strategy: tf.distribute.Strategy | None = None,
    data_rms: float = 1.0,
    progress: Progress | None = None,
    given: Given | None = None,
) -> Drawn:
    """n samples of `restored` (a `run.Restored`) by `spec`, from `seed` (int or [2]).

    `frames` as the samplers take them (a count, chain steps, or a function of the chain's
    length); `data_rms` (the data's RMS in model units) only scales the health figures;
    `progress(i, num_steps)` is called after each step of the chain. With `given` entries the
    sampler fills in the rest (inpainting, imputation) and the given ones come back as given."""
    objective = restored.objective
    check_compatible(spec, objective)
    seed = seed_tensor(seed)
    replicas = strategy.num_replicas_in_sync if strategy else 1
    padded = -(-n // replicas) * replicas  # the batch must split evenly over the replicas
    shape = (padded, *restored.example_shape)
    model, info = restored.model, spec.info
    num_classes = restored.config.network.num_classes
    label = None
    if given is not None:
        known = _known(restored, spec, given, n, padded)
        if given.reconstruction and info.family not in RECONSTRUCTION_FAMILIES:
            raise SamplerMismatch(
                "reconstruction guidance is for DDPM runs' and the score-SDE samplers"
            )
        if given.reconstruction and replicas > 1:
            raise SamplerMismatch("reconstruction guidance runs on one device")
        # Unconditional unless a label is given: the null label, num_classes.
        label = num_classes if given.label is None else given.label
        if num_classes and given.label is None and spec.guidance:
            raise SamplerMismatch("guidance needs a label to guide towards (given.label)")
        if given.label is not None and not num_classes:
            raise SamplerMismatch(f"label={given.label} needs a class-conditional run")
    if num_classes:
        model = class_guided(
            model,
            num_classes,
            spec.guidance,
            restored.example_shape[-1],
            interval=spec.guidance_interval,
            noise_level=objective.noise_level,
            label=label,
        )
    common = {
        "seed": seed,
        "frames": frames,
        "strategy": strategy,
        "progress": progress,
        **spec.kwargs(),
        **({"known": known} if given is not None else {}),
    }
    if info.family == "diffusion":
        clip = (-1.0, 1.0) if restored.normalizer.is_image else None
        if given is not None and given.reconstruction:
            model = reconstruction_guided(
                model, objective.diffusion, known.values, known.mask, given.reconstruction
            )
        out = info.fn(model, objective.diffusion, shape, clip_x0=clip, **common)
    elif info.family == "sde":
        sde, score_fn = objective.sde_view(model)
        if given is not None and given.reconstruction:
            score_fn = reconstruction_guided_score(
                score_fn, sde, known.values, known.mask, given.reconstruction
            )
        if restored.normalizer.is_image:
            score_fn = clip_data_prediction(score_fn, sde, -1.0, 1.0)
        out = info.fn(score_fn, sde, shape, **common)
    elif info.anneals:
        sigmas = objective.sigmas
        start = tf.random.stateless_normal(shape, seed) * float(sigmas[0])
        out = info.fn(model, start, sigmas, data_rms=data_rms, **common)
    else:
        sigma = float(objective.sigmas[-1])
        start = tf.random.stateless_normal(shape, seed)
        out = info.fn(lambda x: model(x, tf.fill([tf.shape(x)[0]], sigma)), start, **common)
    to_data = restored.normalizer.to_data
    try:
        samples = to_data(out.samples.numpy()[:n])
        chain = None if out.frames is None else to_data(out.frames.numpy()[:, :n])
    except ValueError as err:
        raise ValueError(f"checkpoint ckpt-{restored.step}: {err}") from None
    if given is not None:  # bit for bit, whatever the units' round trip does
        samples = np.where(given.mask, given.values, samples)
        if chain is not None:
            chain[-1] = np.where(given.mask, given.values, chain[-1])
    return Drawn(samples, chain, tuple(out.health), out.evaluations)


def _known(restored, spec: SamplerSpec, given: Given, n: int, padded: int) -> Known:
    """`given` in model units, padded to the chain's batch, for the sampler."""
    if not fills_in(spec):
        able = sorted(name for name in SAMPLERS if fills_in(SamplerSpec.of(name)))
        raise SamplerMismatch(
            f"sampler {spec.name!r} cannot fill in given entries; these can: {', '.join(able)}"
        )
    shape = (n, *restored.example_shape)
    values, mask = np.asarray(given.values), np.asarray(given.mask, bool)
    if values.shape != shape:
        raise ValueError(f"given values are of shape {values.shape}; the samples are {shape}")
    try:
        mask = np.broadcast_to(mask, shape)
    except ValueError:
        raise ValueError(f"given mask of shape {mask.shape} does not fit samples {shape}") from None
    model_values = restored.normalizer.to_model(values, np.float32)
    extra = padded - n  # rows that only fill the replicas' shares, dropped afterwards
    model_values = np.concatenate([model_values, np.repeat(model_values[-1:], extra, 0)])
    mask = np.concatenate([mask, np.repeat(mask[-1:], extra, 0)]).astype(np.float32)
    return Known(
        tf.constant(model_values),
        tf.constant(mask),
        jump_length=given.jump_length,
        resamplings=given.resamplings,
    )


def draw_chunk(
    restored,
    spec: SamplerSpec,
    *,
    n: int,
    chunk_rows: int,
    index: int,
    seed: int,
    strategy: tf.distribute.Strategy | None = None,
    data_rms: float = 1.0,
    progress: Progress | None = None,
) -> Drawn:
    """Chunk `index` (rows index * chunk_rows onwards) of the n-sample set drawn with `seed`.
    `progress` follows the chain (not called when the chunk is remembered). Chunk 0 comes with
    its chain at the `preview_steps` (`frames`): the sampling GIF of a set's first samples is
    drawn with them, not again."""
    size = min(chunk_rows, n - index * chunk_rows)
    if size <= 0:
        raise ValueError(f"chunk {index} of {chunk_rows} rows is past the set's {n} samples")

    def fresh() -> Drawn:
        return draw(
            restored,
            spec,
            size,
            [seed, index],
            frames=preview_steps if index == 0 else None,
            strategy=strategy,
            data_rms=data_rms,
            progress=progress,
        )

    identity = getattr(restored, "identity", ())
    replicas = strategy.num_replicas_in_sync if strategy else 1
    # data_rms is not part of the key: it only sets the RMS an annealed chain's health compares
    # against, which is recomputed for the caller's (an evaluation measures it, a sample set
    # does not: with it in the key the sample set redrew the evaluation's chunk).
    key = (identity, spec, size, int(seed), int(index), replicas)
    remembered = remember(key if identity else None, fresh)
    health = tuple(
        LevelHealth(h.sigma, h.rms, float(np.hypot(data_rms, h.sigma))) for h in remembered.health
    )
    return dataclasses.replace(remembered, health=health)


def remember(key, fresh: Callable[[], Drawn]) -> Drawn:
    """The draw remembered in this process under `key` (hashable: what decides the draw), or
    `fresh()` remembered under it, its samples read-only; with key None (weights of unknown
    origin: nothing to remember them by) `fresh()` alone."""
    if key is None:
        return fresh()
    with _memo_lock:
        remembered = _memo.get(key)
        if remembered is not None:
            _memo.move_to_end(key)
            return remembered
    remembered = fresh()
    remembered.samples.setflags(write=False)
    with _memo_lock:
        _memo[key] = remembered
        while sum(_nbytes(d) for d in _memo.values()) > MEMO_BYTES and len(_memo) > 1:
            _memo.popitem(last=False)
    return remembered


def _nbytes(drawn: Drawn) -> int:
    return drawn.samples.nbytes + (0 if drawn.frames is None else drawn.frames.nbytes)


def draw_chunks(
    restored,
    spec: SamplerSpec,
    *,
    n: int,
    chunk_rows: int,
    seed: int,
    fraction: Callable[[float], None] | None = None,
    **kw,
) -> Iterator[Drawn]:
    """The set's chunks in order; `fraction(f)` reports the share of the set drawn so far (0 to
    1), through each chunk's chain."""
    count = -(-n // chunk_rows)
    for index in range(count):
        step = None
        if fraction is not None:

            def step(i, total, index=index):
                fraction((index + i / max(total, 1)) / count)

        yield draw_chunk(
            restored, spec, n=n, chunk_rows=chunk_rows, index=index, seed=seed, progress=step, **kw
        )
        if fraction is not None:
            fraction((index + 1) / count)


def draw_set(restored, spec: SamplerSpec, *, n: int, chunk_rows: int, seed: int, **kw) -> Drawn:
    """All n samples, chunk by chunk, with the chain's health pooled over the chunks (RMS of
    the whole set at each level). `fraction(f)`, if given, follows the share drawn."""
    chunks = list(draw_chunks(restored, spec, n=n, chunk_rows=chunk_rows, seed=seed, **kw))
    samples = np.concatenate([c.samples for c in chunks])
    return Drawn(samples, None, pool_health([(c.health, len(c.samples)) for c in chunks]))


def pool_health(parts) -> tuple[LevelHealth, ...]:
    """[(health of a chunk, its rows)] -> the health of all rows together."""
    parts = [(health, rows) for health, rows in parts if health]
    if not parts:
        return ()
    total = sum(rows for _, rows in parts)
    levels = zip(*[health for health, _ in parts], strict=True)
    return tuple(
        LevelHealth(
            level[0].sigma,
            float(
                np.sqrt(
                    sum(h.rms**2 * rows for h, (_, rows) in zip(level, parts, strict=True)) / total
                )
            ),
            level[0].expected_rms,
        )
        for level in levels
    )
