"""Large-batch sample generation into Parquet sample sets.

A sample set is a dataset: generated samples are exposed as a data source ("diffusion_samples")
and prepared with the same machinery as any dataset, so they get the same shards, manifest,
atomic writes, idempotent re-runs, per-shard fan-out (`prepare_shard`) and reader. Rows are
generated in fixed chunks of `chunk_rows`, each from its own seed (seed, chunk): regenerating a
shard gives the same samples, and memory holds one chunk, never the whole set.

    generate_samples(run_dir, out_dir, n=..., sampler="ddim", ...) -> Manifest

Samplers: "ddpm" (ancestral, all T steps), "ddim" (`num_steps`, `eta`) for DDPM runs;
"annealed_langevin" (`steps_per_level`, `step_lr`) for score runs. EMA weights always. Images are
stored as uint8 (samples clipped to [-1, 1]); points are mapped back from the training set's
standardisation to data units. With several local GPUs each chunk is split over all of them.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import tensorflow as tf

from diffusion_lib import render
from diffusion_lib.data import DataError, DatasetSpec, Manifest, open_dataset, prepare_dataset
from diffusion_lib.data.sources.base import Examples, check_range, register_source
from diffusion_lib.samplers import annealed_langevin_dynamics, ddim_sample, ddpm_sample
from diffusion_lib.training import committed_steps, load_ema_model

SAMPLERS = ("ddpm", "ddim", "annealed_langevin")
DISTRIBUTE = ("auto", "none")


def _local_strategy(mode: str) -> tf.distribute.Strategy | None:
    if mode == "none":
        return None
    gpus = tf.config.list_logical_devices("GPU")
    return tf.distribute.MirroredStrategy() if len(gpus) > 1 else None


class DiffusionSamples:
    """A source whose rows are samples of one checkpoint, generated on demand by chunk."""

    def __init__(
        self,
        split: str,
        *,
        run_dir: str,
        n: int,
        step: int,
        sampler: str = "ddim",
        num_steps: int = 50,
        eta: float = 0.0,
        steps_per_level: int = 20,
        step_lr: float = 2e-5,
        seed: int = 0,
        chunk_rows: int = 1000,
        distribute: str = "auto",
    ):
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise DataError(f"n must be a positive integer, got {n!r}")
        if sampler not in SAMPLERS:
            raise DataError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        if distribute not in DISTRIBUTE:
            raise DataError(f"distribute must be one of {DISTRIBUTE}, got {distribute!r}")
        if chunk_rows <= 0:
            raise DataError(f"chunk_rows must be positive, got {chunk_rows}")
        self.strategy = _local_strategy(distribute)
        self.restored = load_ema_model(run_dir, step, strategy=self.strategy)
        objective = self.restored.objective
        is_diffusion = hasattr(objective, "diffusion")
        if is_diffusion and sampler == "annealed_langevin":
            raise DataError(
                "sampler 'annealed_langevin' needs a score-model run; this run trains a DDPM"
            )
        if not is_diffusion and sampler != "annealed_langevin":
            raise DataError(f"sampler {sampler!r} needs a DDPM run; this run trains a score model")
        if (
            is_diffusion
            and sampler == "ddim"
            and not 1 <= num_steps <= objective.diffusion.num_timesteps
        ):
            raise DataError(
                f"num_steps must be in [1, {objective.diffusion.num_timesteps}] for DDIM, got {num_steps}"
            )
        record = json.loads((pathlib.Path(run_dir) / "config.json").read_text())
        self.example_shape = tuple(record["network"]["data_shape"])
        self.kind = "image" if len(self.example_shape) == 3 else "points"
        self.has_labels = False
        self.n, self.sampler, self.num_steps, self.eta = n, sampler, num_steps, eta
        self.steps_per_level, self.step_lr, self.seed, self.chunk_rows = (
            steps_per_level,
            step_lr,
            seed,
            chunk_rows,
        )
        self.run_dir, self.step = str(run_dir), step
        if self.kind == "points":
            stats = open_dataset(self.restored.config.data_dir, verify="none").manifest.stats
            self._mean, self._std = np.array(stats["mean"]), np.array(stats["std"])

    def __len__(self) -> int:
        return self.n

    def metadata(self) -> dict:
        return {
            "run_dir": self.run_dir,
            "checkpoint": f"ckpt-{self.step}",
            "step": self.step,
            "sampler": self.sampler,
            "steps": self.num_steps if self.sampler == "ddim" else None,
            "eta": self.eta if self.sampler == "ddim" else None,
            "seed": self.seed,
            "chunk_rows": self.chunk_rows,
        }

    def _chunk(self, index: int) -> np.ndarray:
        size = min(self.chunk_rows, self.n - index * self.chunk_rows)
        replicas = self.strategy.num_replicas_in_sync if self.strategy else 1
        padded = -(-size // replicas) * replicas  # the batch must split evenly over replicas
        shape, seed = (padded, *self.example_shape), [self.seed, index]
        model, objective = self.restored.model, self.restored.objective
        clip = (-1.0, 1.0) if self.kind == "image" else None
        if self.sampler == "ddpm":
            out = ddpm_sample(
                model, objective.diffusion, shape, seed=seed, clip_x0=clip, strategy=self.strategy
            )
        elif self.sampler == "ddim":
            out = ddim_sample(
                model,
                objective.diffusion,
                shape,
                seed=seed,
                num_steps=self.num_steps,
                eta=self.eta,
                clip_x0=clip,
                strategy=self.strategy,
            )
        else:
            start = tf.random.stateless_normal(shape, seed) * float(objective.sigmas[0])
            out = annealed_langevin_dynamics(
                model,
                start,
                objective.sigmas,
                self.steps_per_level,
                self.step_lr,
                seed=seed,
                denoise_final=True,
                strategy=self.strategy,
            )
        samples = out.samples.numpy()[:size]
        if not np.all(np.isfinite(samples)):
            raise DataError(
                f"checkpoint ckpt-{self.step}: chunk {index} of the samples contains NaN or Inf"
            )
        if self.kind == "image":
            return render.to_uint8(samples)
        return (samples * self._std + self._mean).astype(np.float32)

    def read(self, start: int, stop: int) -> Examples:
        check_range(start, stop, self.n)
        parts = []
        for chunk in range(start // self.chunk_rows, (max(stop, 1) - 1) // self.chunk_rows + 1):
            values = self._chunk(chunk)
            lo = max(start - chunk * self.chunk_rows, 0)
            hi = min(stop - chunk * self.chunk_rows, len(values))
            parts.append(values[lo:hi])
        return Examples(np.concatenate(parts), None)


register_source("diffusion_samples")(DiffusionSamples)


def sample_set_spec(
    run_dir: str | pathlib.Path,
    *,
    n: int,
    sampler: str = "ddim",
    step: int | None = None,
    rows_per_shard: int = 5_000,
    **options,
) -> DatasetSpec:
    """The DatasetSpec of a sample set; `step=None` resolves to the run's latest checkpoint."""
    steps = committed_steps(pathlib.Path(run_dir) / "checkpoints")
    if not steps:
        raise DataError(f"{run_dir}: no complete checkpoint to sample from")
    step = steps[-1] if step is None else step
    if step not in steps:
        raise DataError(f"{run_dir}: no complete checkpoint for step {step}; have {steps}")
    rows_per_shard = min(rows_per_shard, max(n, 1))
    return DatasetSpec.create(
        "diffusion_samples",
        split="samples",
        rows_per_shard=rows_per_shard,
        row_group_size=min(1_000, rows_per_shard),
        run_dir=str(run_dir),
        n=n,
        step=step,
        sampler=sampler,
        **options,
    )


def generate_samples(
    run_dir: str | pathlib.Path,
    out_dir: str | pathlib.Path,
    *,
    n: int,
    sampler: str = "ddim",
    step: int | None = None,
    rows_per_shard: int = 5_000,
    grid: int = 8,
    **options,
) -> Manifest:
    """Generates (or completes) the sample set in `out_dir` and writes `grid.png` of the first
    samples; a directory holding a different sample set is refused (DataError)."""
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise DataError(f"n must be a positive integer, got {n!r}")
    spec = sample_set_spec(
        run_dir, n=n, sampler=sampler, step=step, rows_per_shard=rows_per_shard, **options
    )
    manifest = prepare_dataset(spec, out_dir)
    first = open_dataset(out_dir).read(0, min(n, grid * grid)).values
    if manifest.kind == "image":
        render.save_image_grid(first, pathlib.Path(out_dir) / "grid.png", columns=grid)
    else:
        render.save_points(open_dataset(out_dir).read().values, pathlib.Path(out_dir) / "grid.png")
    return manifest
