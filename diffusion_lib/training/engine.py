"""The training loop: one distributed step in `tf.function`, checkpoints, reports, exact resume.

A step is a pure function of (weights, optimizer state, global batch k, seed, k): the batch
comes from the reader at position k, randomness from `fold_in(seed, k)`. Checkpoints hold the
model, optimizer, EMA and step; restoring step k and continuing therefore reproduces an
uninterrupted run (bitwise on CPU with op determinism on).

Distribution: each replica computes the gradient of sum(its per-example losses) / global batch;
the gradients are summed across replicas (all-reduce) and clipped by their global norm (the same
norm on every replica, so clipping does not depend on the replica count; Keras's own clipping
acts per replica, before summing). That is the step's one gradient all-reduce: Keras's
optimizer applies the clipped sum as it is (make_optimizer turns off the second all-reduce it
would do), and the EMA is updated in cross-replica context.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import pathlib
import time
from collections.abc import Callable

import keras
import tensorflow as tf

from diffusion_lib import run_lock
from diffusion_lib._atomic import atomic_write_bytes
from diffusion_lib.data import open_dataset
from diffusion_lib.networks import NetworkConfig, build_network, preset
from diffusion_lib.training.checkpoints import (
    DAMAGED_DIR,
    CheckpointStore,
    committed_steps,
    read_marker,
    restore,
)
from diffusion_lib.training.config import (
    ConfigError,
    TrainConfig,
    check_against_data,
    init_from_parts,
)
from diffusion_lib.training.objectives import build_objective
from diffusion_lib.training.strategy import choose_strategy, worker_role

# What the training engine writes into a run directory (diffusion_lib.run.Run reads them).
CONFIG_NAME = "config.json"
CHECKPOINTS_DIR = "checkpoints"
TRAINING_LOG = "metrics.jsonl"
# The training log's figures that TensorBoard's events hold as well (a damaged log is rebuilt
# from them); with step, total and time they make a log row.
_LOG_SCALARS = ("loss", "images_per_sec", "learning_rate", "grad_norm")
TENSORBOARD_DIR = "tensorboard"


class TrainingDiverged(RuntimeError):
    """The loss or the gradient became NaN or Inf; the message names the step."""


@dataclasses.dataclass(frozen=True)
class Progress:
    step: int
    total: int
    loss: float
    images_per_sec: float
    learning_rate: float
    grad_norm: float


@dataclasses.dataclass(frozen=True)
class TrainResult:
    run_dir: str
    step: int
    checkpoint: str | None
    loss: float | None
    images_per_sec: float | None
    stopped_early: bool


@keras.saving.register_keras_serializable(package="diffusion_lib")
class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to `peak` over `warmup_steps` (DDPM: 5,000 steps), then constant,
    or with decay="cosine" a half cosine from `peak` at the warm-up's end to
    `final_fraction * peak` at `decay_steps`, and that value after; or with decay="cooldown"
    constant until `decay_steps - cooldown_steps`, then linear down to `final_fraction * peak`
    at `decay_steps` (warmup-stable-decay), and that value after."""

    def __init__(
        self,
        peak: float,
        warmup_steps: int,
        decay: str = "constant",
        decay_steps: int = 0,
        final_fraction: float = 0.0,
        cooldown_steps: int = 0,
    ):
        self.peak, self.warmup_steps = float(peak), int(warmup_steps)
        self.decay, self.decay_steps = decay, int(decay_steps)
        self.final_fraction = float(final_fraction)
        self.cooldown_steps = int(cooldown_steps)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        fraction = tf.constant(1.0)
        if self.warmup_steps:
            fraction = tf.minimum(1.0, (step + 1.0) / self.warmup_steps)
        if self.decay == "cosine":
            span = float(max(self.decay_steps - self.warmup_steps, 1))
            done = tf.clip_by_value((step - self.warmup_steps) / span, 0.0, 1.0)
            cosine = 0.5 * (1.0 + tf.cos(math.pi * done))
            fraction *= self.final_fraction + (1.0 - self.final_fraction) * cosine
        elif self.decay == "cooldown":
            start = float(self.decay_steps - self.cooldown_steps)
            done = tf.clip_by_value((step - start) / float(max(self.cooldown_steps, 1)), 0.0, 1.0)
            fraction *= 1.0 - (1.0 - self.final_fraction) * done
        return self.peak * fraction

    def get_config(self):
        return {
            "peak": self.peak,
            "warmup_steps": self.warmup_steps,
            "decay": self.decay,
            "decay_steps": self.decay_steps,
            "final_fraction": self.final_fraction,
            "cooldown_steps": self.cooldown_steps,
        }

    @classmethod
    def of(cls, config: TrainConfig) -> WarmupSchedule:
        return cls(
            config.optim.learning_rate,
            config.optim.warmup_steps,
            config.optim.lr_schedule,
            config.optim.decay_steps,
            config.optim.final_lr_fraction,
            config.optim.cooldown_steps,
        )


class EmaWeights(tf.Module):
    """Exponential moving averages of the trainable weights, kept apart from them:
    ema <- rate * ema + (1 - rate) * weight after every update k, with rate = decay, or with
    `ema_warmup` rate = min(decay, (1 + k) / (10 + k)); evaluation and sampling copy
    them into a model of their own, training never reads them."""

    def __init__(self, weights):
        super().__init__(name="ema")
        self.averages = [
            tf.Variable(w.value if hasattr(w, "value") else w, trainable=False) for w in weights
        ]


def network_config(config: TrainConfig, data_shape: tuple[int, ...], objective) -> NetworkConfig:
    overrides = {
        **objective.network_overrides(),
        "num_classes": config.network.num_classes,
        **dict(config.network.overrides),
    }
    return preset(
        config.network.name,
        data_shape=tuple(data_shape),
        precision=config.execution.precision,
        **overrides,
    )


@functools.cache
def _given_reduced_gradients(base: type) -> type:
    """`base` (a Keras optimizer class) told that the gradients it is given are already summed
    over replicas. The train step all-reduces them itself (once), so that clipping by their
    global norm is independent of the replica count; Keras's TensorFlow optimizer would all-reduce
    them again inside `apply`, doubling the one collective that limits multi-GPU scaling. Keras 3
    has no public switch for this, so the subclass replaces the private method it calls; if a
    Keras version drops that method, this fails loudly rather than summing twice."""
    if not callable(getattr(base, "_all_reduce_sum_gradients", None)):
        raise RuntimeError(
            f"{base.__name__} has no _all_reduce_sum_gradients: this Keras version aggregates "
            "gradients differently; the train step's single all-reduce needs updating"
        )

    def _all_reduce_sum_gradients(self, grads_and_vars):
        return list(grads_and_vars)

    return type(base.__name__, (base,), {"_all_reduce_sum_gradients": _all_reduce_sum_gradients})


MIN_PACK_BYTES = 4 * 2**20


def allreduce_options(
    variables, buckets: int, dtype: str = "float32"
) -> tf.distribute.experimental.CommunicationOptions:
    """The gradient all-reduce (of `variables`' gradients sent as `dtype`) in about `buckets`
    packs of equal bytes. TensorFlow's collective all-reduce (MultiWorkerMirroredStrategy's)
    packs the gradients last variable first, the order the backward pass produces them in, and
    runs each pack's all-reduce as soon as its gradients exist, while the backward pass goes
    on; 1 bucket is one all-reduce at its end. Packs are at least MIN_PACK_BYTES: below that an
    all-reduce costs its latency more than its bytes, and a small network's gradients go in
    fewer packs. A one-host strategy without collectives ignores it."""
    total = sum(math.prod(v.shape) for v in variables) * tf.as_dtype(dtype).size
    per_pack = 0 if buckets <= 1 else max(-(-total // buckets), MIN_PACK_BYTES)
    return tf.distribute.experimental.CommunicationOptions(bytes_per_pack=per_pack)


def make_optimizer(config: TrainConfig) -> keras.optimizers.Optimizer:
    """The optimizer of `config`. It applies the gradients it is given as they are: under a
    distribution strategy the caller hands it gradients already summed over replicas."""
    schedule = WarmupSchedule.of(config)
    common = {
        "learning_rate": schedule,
        "beta_1": config.optim.beta_1,
        "beta_2": config.optim.beta_2,
        "epsilon": 1e-8,
    }
    if config.optim.optimizer == "adamw":
        optimizer = _given_reduced_gradients(keras.optimizers.AdamW)(
            weight_decay=config.optim.weight_decay, **common
        )
    else:
        optimizer = _given_reduced_gradients(keras.optimizers.Adam)(**common)
    if config.execution.precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def _repair_log(
    path: pathlib.Path,
    step: int,
    log_every: int,
    total: int,
    tensorboard_dir: pathlib.Path,
    warn: Callable[[str], None],
) -> None:
    """Makes the training log hold each logged step up to `step` (the checkpoint resumed from)
    once: rows past it (logged after that checkpoint) are dropped, and rows cut short or lost
    (a kill mid-write, a truncated file) are rebuilt from the TensorBoard events, which hold the
    same figures; steps neither holds are reported by `warn`."""
    rows, damaged = {}, 0
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
                rows[int(row["step"])] = row
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                damaged += 1  # a row cut short
    kept = {k: row for k, row in rows.items() if k <= step}
    missing = [k for k in range(log_every, step + 1, log_every) if k not in kept]
    rebuilt = []
    if damaged or missing:
        for k, row in _tensorboard_rows(tensorboard_dir, step, total).items():
            if k not in kept:
                kept[k] = row
                rebuilt.append(k)
    if rebuilt:
        warn(
            f"{path}: {len(rebuilt)} logged step(s) were cut short or missing "
            f"({_spans(sorted(rebuilt))}); rebuilt from the TensorBoard events in "
            f"{tensorboard_dir}"
        )
    lost = [k for k in missing if k not in kept]
    if lost:
        warn(f"{path}: step(s) {_spans(lost)} are in neither the log nor the TensorBoard events")
    if damaged or rebuilt or len(kept) != len(rows):
        text = "".join(json.dumps(kept[k]) + "\n" for k in sorted(kept))
        atomic_write_bytes(path, text.encode())


def _tensorboard_rows(directory: pathlib.Path, step: int, total: int) -> dict[int, dict]:
    """Training-log rows up to `step` from the scalars `Trainer._log` writes beside them (the
    last event of a step wins: a resumed run writes the steps after its checkpoint again)."""
    fields: dict[int, dict] = {}
    for events in sorted(directory.glob("events.out.tfevents.*")):
        try:
            for event in tf.compat.v1.train.summary_iterator(str(events)):
                if not event.HasField("summary") or event.step > step:
                    continue
                row = fields.setdefault(int(event.step), {})
                for value in event.summary.value:
                    if value.tag in _LOG_SCALARS:
                        row[value.tag] = float(tf.make_ndarray(value.tensor))
                row["time"] = event.wall_time
        except tf.errors.DataLossError:
            continue  # a file cut short by a kill: its complete events have been read
    return {
        k: {
            "step": k,
            "total": total,
            **{name: row.get(name) for name in _LOG_SCALARS},
            "time": row["time"],
        }
        for k, row in fields.items()
        if "loss" in row
    }


def _spans(steps: list[int]) -> str:
    """ "50-300 (6 steps), 450" style: the steps, short."""
    if len(steps) <= 4:
        return ", ".join(map(str, steps))
    return f"{steps[0]}-{steps[-1]} ({len(steps)} steps)"


def _read_record(
    path: pathlib.Path, run_dir: pathlib.Path, config: TrainConfig, warn: Callable[[str], None]
) -> dict | None:
    """The run's stored record, or None when `path` is damaged (cut short, not JSON, not a
    record) and `config` is the one the run's checkpoints were written by, so that it is
    rebuilt from `config`; a damaged record that `config` does not match is a ConfigError
    naming the file and what to do."""
    try:
        stored = json.loads(path.read_text())
        TrainConfig.from_dict(stored["config"])
        return stored
    except (ValueError, KeyError, TypeError) as error:  # JSONDecodeError, UnicodeDecodeError
        damage = f"{path} cannot be read ({type(error).__name__}: {error})"
    steps = committed_steps(run_dir / CHECKPOINTS_DIR)
    written_by = None
    if steps:
        try:
            written_by = read_marker(run_dir / CHECKPOINTS_DIR, steps[-1])["config_fingerprint"]
        except (ValueError, KeyError, TypeError, OSError):
            pass  # a marker as damaged as the record: nothing to rebuild it against
    if steps and not config.matches_fingerprint(written_by):
        raise ConfigError(
            f"{damage}, and this config is not the one its checkpoints were written by "
            f"(fingerprint {config.fingerprint()}, ckpt-{steps[-1]}'s {written_by}): resume with "
            f"the run's own parameters, or restore {path.name} from a copy"
        )
    agreed = f"the checkpoints up to ckpt-{steps[-1]}" if steps else "no checkpoint yet"
    warn(f"{damage}: rebuilt from this run's parameters, which match {agreed}")
    return None


def _prepare_run_dir(
    run_dir: pathlib.Path,
    config: TrainConfig,
    dataset_fingerprint: str,
    is_chief: bool,
    network: NetworkConfig,
    warn: Callable[[str], None] = lambda message: None,
) -> None:
    """Writes config.json on a new run, or rebuilds a damaged one (`_read_record`); on an
    existing one, refuses a different identity."""
    path = run_dir / CONFIG_NAME
    # A data directory inside the run is recorded relative to it, so the run can be moved,
    # copied or resumed from any working directory; one elsewhere is recorded absolute.
    data_dir = pathlib.Path(config.data.data_dir).resolve()
    try:
        data_dir = data_dir.relative_to(run_dir.resolve())
    except ValueError:
        pass
    record = {
        "config": config.replace(data_dir=str(data_dir)).to_dict(),
        "identity": config.identity(),
        "dataset_fingerprint": dataset_fingerprint,
        "network": network.to_dict(),
    }
    stored = _read_record(path, run_dir, config, warn) if path.is_file() else None
    if stored is not None:
        # Through TrainConfig: a field added since the run began reads as its default, which
        # is what that run trained with, so older run directories stay resumable.
        # A record of an earlier version is migrated on read (TrainConfig.from_dict).
        earlier = TrainConfig.from_dict(stored["config"])
        differing = earlier.differences(config)
        if differing == ["objective"]:
            raise ConfigError(
                f"run directory {run_dir} trains objective {earlier.objective!r}, this config "
                f"{config.objective!r}; resume it with its own model or use a new run directory"
            )
        if differing:
            raise ConfigError(
                f"run directory {run_dir} belongs to another config (fields differ: {differing}); "
                "use a new run directory"
            )
        if stored.get("dataset_fingerprint") != dataset_fingerprint:
            raise ConfigError(
                f"run directory {run_dir} was trained on another dataset; use a new run directory"
            )
        return
    if is_chief:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, json.dumps(record, indent=2, sort_keys=True).encode())


class Trainer:
    """Builds everything for one run directory and trains; `train()` below is the usual entry."""

    def __init__(
        self,
        config: TrainConfig,
        run_dir: str | pathlib.Path,
        *,
        strategy: tf.distribute.Strategy | None = None,
        warn: Callable[[str], None] | None = None,
    ):
        """`warn(message)` hears what the user should know but does not stop the run (a
        damaged checkpoint set aside); default: the `diffusion_lib.training` logger."""
        warn = warn or logging.getLogger("diffusion_lib.training").warning
        if not config.data.data_dir:
            raise ConfigError("data.data_dir: must name a prepared dataset directory")
        self.config = config
        self.run_dir = pathlib.Path(run_dir)
        self.strategy = strategy or choose_strategy(
            config.execution.strategy, config.execution.devices
        )
        self.is_chief, self.worker_id = worker_role(self.strategy)
        self.dataset = open_dataset(config.data.data_dir)
        # Checked before the run directory is written, so a re-run with a sane value is the
        # same run, not "another config".
        check_against_data(config, self.dataset, self.strategy.num_replicas_in_sync)
        self.objective = build_objective(config)
        self.network_config = network_config(config, self.dataset.example_shape, self.objective)
        if self.is_chief:  # one writer per run directory (re-entrant; inherited from a flow)
            run_lock.acquire(self.run_dir)
        _prepare_run_dir(
            self.run_dir,
            config,
            self.dataset.manifest.fingerprint,
            self.is_chief,
            self.network_config,
            warn,
        )
        self._build_state()
        self._resume(warn)
        self._train_step = self._make_train_step()

    def _build_state(self) -> None:
        """The network, optimizer, EMA and step, in the strategy's scope, and their checkpoint
        store."""
        config = self.config
        with self.strategy.scope():
            self.model = build_network(self.network_config, seed=config.run.seed)
            self.optimizer = make_optimizer(config)
            # Built inside the scope before the first distributed step (a Keras 3 requirement).
            self.optimizer.build(self.model.trainable_variables)
            self.ema = EmaWeights(self.model.trainable_variables)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.checkpoint = tf.train.Checkpoint(
            model=self.model, optimizer=self.optimizer, ema=self.ema, step=self.step
        )
        self.store = CheckpointStore(
            self.run_dir / CHECKPOINTS_DIR,
            self.checkpoint,
            is_chief=self.is_chief,
            worker_id=self.worker_id,
            keep_last=config.run.keep_last,
            keep_every=config.run.keep_every,
        )

    def _resume(self, warn: Callable[[str], None]) -> None:
        """From the newest good checkpoint (damaged ones set aside, with a warning), else from
        the warm start's weights, if any."""

        def damaged(step: int, why: str) -> None:
            warn(
                f"checkpoint ckpt-{step} is damaged ({why}); set aside in "
                f"{self.store.directory / DAMAGED_DIR}, resuming from the newest good one"
            )

        latest = self.store.restore_latest(on_damage=damaged)
        if latest is not None:
            if int(self.step.numpy()) != latest:
                raise ConfigError(f"checkpoint ckpt-{latest} holds step {int(self.step.numpy())}")
            if self.is_chief:
                _repair_log(
                    self.run_dir / TRAINING_LOG,
                    latest,
                    self.config.run.log_every,
                    self.config.run.num_steps,
                    self.run_dir / TENSORBOARD_DIR,
                    warn,
                )
        elif self.config.run.init_from:
            self._warm_start(*init_from_parts(self.config.run.init_from))

    def _warm_start(self, source: str, step: int) -> None:
        """Trained and averaged weights := the EMA weights of `source`'s checkpoint `step`."""
        checkpoints = pathlib.Path(source) / CHECKPOINTS_DIR
        if step not in committed_steps(checkpoints):
            raise ConfigError(f"init_from: {checkpoints} has no complete checkpoint {step}")
        donor = EmaWeights(self.model.trainable_variables)
        restore(tf.train.Checkpoint(model=self.model, ema=donor), checkpoints, step, partial=True)
        for weight, average, own in zip(
            self.model.trainable_variables, donor.averages, self.ema.averages, strict=True
        ):
            weight.assign(average)
            own.assign(average)

    # ---------------------------------------------------------------- the step

    def _make_train_step(self):
        config, model, optimizer, objective = (
            self.config,
            self.model,
            self.optimizer,
            self.objective,
        )
        global_batch = config.optim.batch_size
        base_seed = tf.constant([config.run.seed, 0x5EED], tf.int64)
        loss_scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        clip = float(config.optim.grad_clip_norm)
        decay = float(config.optim.ema_decay)
        warmup = bool(config.optim.ema_warmup)
        variables = model.trainable_variables
        execution = config.execution
        packing = allreduce_options(
            variables, execution.allreduce_buckets, execution.allreduce_dtype
        )
        compress = execution.allreduce_dtype == "bfloat16"

        def loss_and_grads(x, labels, step_seed, offset):
            with tf.GradientTape() as tape:
                per_example = objective.losses(
                    model, x, step_seed, offset, global_batch, labels=labels
                )
                loss = tf.reduce_sum(tf.cast(per_example, tf.float32)) / global_batch
                scaled = optimizer.scale_loss(loss) if loss_scaled else loss
            return loss, tape.gradient(scaled, variables)

        # autograph=False: the step has no Python control flow on tensors to convert, and
        # converting the network and objective costs every run and every resume time before its
        # first step (unet-tiny, one device, n=2: 14.2 and 14.4 s with it, 9.0 and 11.8 s
        # without). The trained weights are bit-identical either way.
        compute = (
            tf.function(loss_and_grads, jit_compile=True, autograph=False)
            if config.execution.jit_compile
            else loss_and_grads
        )

        def update_ema(strategy, rate):
            for average, weight in zip(self.ema.averages, variables, strict=True):
                strategy.extended.update(
                    average,
                    lambda a, w, r: a.assign(r * a + (1.0 - r) * w),
                    args=(weight.value, rate),
                    group=False,
                )

        def replica_step(x, labels, step):
            ctx = tf.distribute.get_replica_context()
            offset = ctx.replica_id_in_sync_group * tf.shape(x)[0]
            step_seed = tf.random.experimental.stateless_fold_in(base_seed, step)
            loss, grads = compute(x, labels, step_seed, offset)
            if compress and ctx.num_replicas_in_sync > 1:
                grads = [tf.cast(g, tf.bfloat16) for g in grads]
            grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads, options=packing)
            grads = [tf.cast(g, tf.float32) for g in grads]  # float32 ones pass unchanged
            loss = ctx.all_reduce(tf.distribute.ReduceOp.SUM, loss)
            scale = tf.cast(optimizer.scale, tf.float32) if loss_scaled else tf.constant(1.0)
            norm = tf.linalg.global_norm(grads) / scale
            finite = tf.math.is_finite(loss) & (tf.math.is_finite(norm) | loss_scaled)
            if clip > 0:
                grads, _ = tf.clip_by_global_norm(grads, clip * scale, use_norm=norm * scale)
            # The one all-reduce of the step is above; the optimizer (make_optimizer) applies
            # the reduced, clipped gradient as it is, on every replica.
            optimizer.apply(grads, variables)
            rate = tf.constant(decay)
            if warmup:  # min(decay, (1 + k) / (10 + k)): a usable average early in short runs
                k = tf.cast(step, tf.float32)
                rate = tf.minimum(rate, (1.0 + k) / (10.0 + k))
            ctx.merge_call(update_ema, args=(rate,))
            return loss, norm, finite

        @tf.function(autograph=False)
        def train_step(x, labels, step):
            loss, norm, finite = self.strategy.run(replica_step, args=(x, labels, step))
            first = self.strategy.experimental_local_results
            return first(loss)[0], first(norm)[0], first(finite)[0]

        return train_step

    # ---------------------------------------------------------------- the loop

    def _dataset(self, start_step: int):
        config = self.config

        def dataset_fn(ctx):
            return self.dataset.tf_dataset(
                config.optim.batch_size,
                input_context=ctx,
                seed=config.run.seed,
                start_step=start_step,
                flip=config.data.flip,
                shuffle_window=config.data.shuffle_window,
            )

        return self.strategy.distribute_datasets_from_function(dataset_fn)

    def learning_rate(self, step: int) -> float:
        return float(WarmupSchedule.of(self.config)(step))

    def run(
        self,
        *,
        progress: Callable[[Progress], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        max_steps: int | None = None,
    ) -> TrainResult:
        """Trains from the latest checkpoint to `num_steps` (or for at most `max_steps` more).

        Saves a checkpoint every `checkpoint_every` steps, at the end, and when `should_stop()`
        turns true (a clean stop); raises TrainingDiverged on NaN/Inf without saving.
        """
        config = self.config
        start = int(self.step.numpy())
        end = (
            config.run.num_steps
            if max_steps is None
            else min(config.run.num_steps, start + max_steps)
        )
        iterator = iter(self._dataset(start))
        writer = (
            tf.summary.create_file_writer(str(self.run_dir / TENSORBOARD_DIR))
            if self.is_chief
            else None
        )
        last_loss = last_rate = None
        window_start, window_steps = time.perf_counter(), 0
        saved = self.store.latest()
        stopped_early = False
        for step in range(start, end):
            batch = next(iterator)
            loss, norm, finite = self._train_step(batch.x, batch.label, tf.constant(step, tf.int64))
            if not bool(finite):
                raise TrainingDiverged(
                    f"step {step}: loss or gradient is NaN/Inf (loss={float(loss)}, grad norm={float(norm)}); "
                    f"the last good checkpoint is step {saved}"
                )
            self.step.assign(step + 1)
            window_steps += 1
            done = step + 1
            if done % config.run.log_every == 0 or done == end:
                elapsed = time.perf_counter() - window_start
                last_rate = window_steps * config.optim.batch_size / max(elapsed, 1e-9)
                last_loss = float(loss)
                report = Progress(
                    done,
                    config.run.num_steps,
                    last_loss,
                    last_rate,
                    self.learning_rate(step),
                    float(norm),
                )
                self._log(report, writer)
                if progress is not None:
                    progress(report)
                window_start, window_steps = time.perf_counter(), 0
            stop = should_stop is not None and should_stop()
            if done % config.run.checkpoint_every == 0 or done == end or stop:
                self._save(done, last_loss)
                saved = done
            if stop:
                stopped_early = done < config.run.num_steps
                break
        if writer is not None:
            writer.close()
        final = int(self.step.numpy())
        if saved != final and final > start:
            self._save(final, last_loss)
            saved = final
        checkpoint = str(self.store.directory / f"ckpt-{saved}") if saved is not None else None
        return TrainResult(
            str(self.run_dir),
            final,
            checkpoint,
            last_loss,
            last_rate,
            stopped_early or final < config.run.num_steps,
        )

    def _save(self, step: int, loss: float | None) -> None:
        self.store.save(
            step,
            {"config_fingerprint": self.config.fingerprint(), "loss": loss, "time": time.time()},
        )

    def _log(self, report: Progress, writer) -> None:
        if not self.is_chief:
            return
        row = dataclasses.asdict(report) | {"time": time.time()}
        with open(self.run_dir / TRAINING_LOG, "a") as handle:
            handle.write(json.dumps(row) + "\n")
        with writer.as_default(step=report.step):
            for name in _LOG_SCALARS:
                tf.summary.scalar(name, row[name])


def train(
    config: TrainConfig,
    run_dir: str | pathlib.Path,
    *,
    strategy: tf.distribute.Strategy | None = None,
    progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    max_steps: int | None = None,
) -> TrainResult:
    """Trains `config` in `run_dir`, resuming from its latest checkpoint if there is one."""
    trainer = Trainer(config, run_dir, strategy=strategy)
    return trainer.run(progress=progress, should_stop=should_stop, max_steps=max_steps)


def enable_determinism() -> None:
    """Op determinism for exact resume on CPU (process-wide: call from an entry point)."""
    os.environ.setdefault("TF_DETERMINISTIC_OPS", "1")
    tf.config.experimental.enable_op_determinism()
