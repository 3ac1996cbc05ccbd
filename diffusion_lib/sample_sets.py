"""Large-batch sample generation into Parquet sample sets.

A sample set is a dataset: generated samples are exposed as a data source ("diffusion_samples")
and prepared with the same machinery as any dataset, so they get the same shards, manifest,
atomic writes, idempotent re-runs, per-shard fan-out (`prepare_shard`) and reader. Rows are
drawn in fixed chunks of `chunk_rows` by `draw.draw_chunk` (chunk i from seed [seed, i]):
regenerating a shard gives the same samples, and memory holds one chunk, never the whole set.

    generate_samples(run_dir, out_dir, n=..., sampler=SamplerSpec.of("ddim", num_steps=50)) -> Manifest

EMA weights always, loaded on the first chunk drawn (planning a set or finding its shards done
loads nothing) and kept for the process's next shards of the same checkpoint: a worker drawing
many shards loads them once (`weight_loads` counts the loads). Images are stored as uint8,
points in data units (`Normalizer.to_data`). With several local GPUs each chunk is split over
all of them.
"""

from __future__ import annotations

import functools
import pathlib
import threading

import numpy as np
import tensorflow as tf

from diffusion_lib import render
from diffusion_lib.data import DataError, DatasetSpec, Manifest, open_dataset, prepare_dataset
from diffusion_lib.data.manifest import read_manifest
from diffusion_lib.data.shards import read_header
from diffusion_lib.data.sources.base import Examples, check_range, register_source
from diffusion_lib.draw import check_compatible, draw_chunk
from diffusion_lib.reports import reference_points
from diffusion_lib.run import Run
from diffusion_lib.samplers import SamplerSpec

DISTRIBUTE = ("auto", "none")
DEFAULT_SAMPLER = SamplerSpec.of("ddim")
ROWS_PER_SHARD = 5_000
CHUNK_ROWS = 1_000  # samples drawn at once (memory holds one chunk)


@functools.cache
def _local_strategy(mode: str) -> tf.distribute.Strategy | None:
    if mode == "none":
        return None
    gpus = tf.config.list_logical_devices("GPU")
    return tf.distribute.MirroredStrategy() if len(gpus) > 1 else None


_weights_lock = threading.Lock()
_weights: dict[tuple, object] = {}  # one checkpoint's restored weights, for the next shard
_loads = 0


def _shared_weights(run: Run, step: int, distribute: str):
    """Checkpoint `step`'s EMA weights, restored once per process for every shard drawn from
    it (the key names the checkpoint's content: trained again, it is restored again)."""
    global _loads
    key = (str(run.path.resolve()), step, run.checkpoint_digest(step), distribute)
    with _weights_lock:
        if key not in _weights:
            _weights.clear()
            _weights[key] = run.restore(step, strategy=_local_strategy(distribute))
            _loads += 1
        return _weights[key]


def weight_loads() -> int:
    """How many times this process has restored a checkpoint to draw samples from."""
    return _loads


class DiffusionSamples:
    """A source whose rows are samples of one checkpoint, generated on demand by chunk."""

    def __init__(
        self,
        split: str,
        *,
        run_dir: str,
        n: int,
        step: int,
        sampler: str,
        seed: int = 0,
        chunk_rows: int = CHUNK_ROWS,
        distribute: str = "auto",
        checkpoint: str = "",
        **settings,
    ):
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise DataError(f"n must be a positive integer, got {n!r}")
        if distribute not in DISTRIBUTE:
            raise DataError(f"distribute must be one of {DISTRIBUTE}, got {distribute!r}")
        if chunk_rows <= 0:
            raise DataError(f"chunk_rows must be positive, got {chunk_rows}")
        self.run = Run(run_dir)
        if checkpoint and checkpoint != self.run.checkpoint_digest(step):
            raise DataError(
                f"checkpoint ckpt-{step} of {self.run.path} is not the one this sample set was "
                "planned from (it was trained again since); plan the set again"
            )
        try:
            self.spec = SamplerSpec.of(sampler, **settings)
            check_compatible(self.spec, self.run.objective)
        except ValueError as err:  # SamplerMismatch too
            raise DataError(f"sampler: {err}") from None
        self.example_shape = self.run.example_shape
        self.kind = self.run.normalizer.kind
        self.has_labels = False
        self.n, self.step, self.seed, self.chunk_rows = n, step, seed, chunk_rows
        self.distribute = distribute

    def __len__(self) -> int:
        return self.n

    def metadata(self) -> dict:
        # No path: a shard's bytes are a function of what it holds, wherever the run lives.
        return {
            "checkpoint": f"ckpt-{self.step}",
            "step": self.step,
            "sampler": self.spec.to_dict(),
            "seed": self.seed,
            "chunk_rows": self.chunk_rows,
        }

    @property
    def strategy(self) -> tf.distribute.Strategy | None:
        return _local_strategy(self.distribute)

    def _chunk(self, index: int) -> np.ndarray:
        restored = _shared_weights(self.run, self.step, self.distribute)
        try:
            drawn = draw_chunk(
                restored,
                self.spec,
                n=self.n,
                chunk_rows=self.chunk_rows,
                index=index,
                seed=self.seed,
                strategy=self.strategy,
            )
        except ValueError as err:  # NaN or Inf in the samples
            raise DataError(f"chunk {index} of the samples: {err}") from None
        return drawn.samples if self.kind == "image" else drawn.samples.astype(np.float32)

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
    sampler: SamplerSpec,
    step: int | None = None,
    rows_per_shard: int = ROWS_PER_SHARD,
    seed: int = 0,
    chunk_rows: int = CHUNK_ROWS,
    distribute: str = "auto",
) -> DatasetSpec:
    """The DatasetSpec of a sample set; `step=None` resolves to the run's latest checkpoint.

    `n` is its count option: the set's identity (fingerprint) is the checkpoint's content, the
    sampler, the seed and the layout, and a larger `n` extends the set in place (the whole
    shards already drawn are kept). For that, a shard must hold whole chunks: `rows_per_shard`
    is a multiple of `chunk_rows`, so every chunk of a whole shard is drawn at its full size,
    whatever `n` is."""
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise DataError(f"n must be a positive integer, got {n!r}")
    for name, value in (("rows_per_shard", rows_per_shard), ("chunk_rows", chunk_rows)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise DataError(f"{name} must be a positive integer, got {value!r}")
    if rows_per_shard % chunk_rows:
        raise DataError(
            f"rows_per_shard ({rows_per_shard}) must be a multiple of chunk_rows ({chunk_rows}): "
            "a shard of whole chunks holds the same rows whatever the set's size"
        )
    run = Run(run_dir)
    try:
        step = run.checkpoint(step)
    except FileNotFoundError as err:
        raise DataError(f"{err} to sample from") from None
    return DatasetSpec.create(
        "diffusion_samples",
        split="samples",
        rows_per_shard=rows_per_shard,
        row_group_size=min(1_000, rows_per_shard),
        count_option="n",
        run_dir=str(run_dir),  # where; not part of the set's identity
        checkpoint=run.checkpoint_digest(step),  # what: the checkpoint's content
        n=n,
        step=step,
        sampler=sampler.name,
        seed=seed,
        chunk_rows=chunk_rows,
        distribute=distribute,
        **dict(sampler.settings),  # all of them: guidance too, which is no sampler keyword
    )


def fingerprints_in(directory: pathlib.Path) -> set[str]:
    """The fingerprints of the sample set(s) a directory holds (manifest and readable shards)."""
    found = set()
    try:
        found.add(read_manifest(directory).fingerprint)
    except (DataError, OSError, ValueError):
        pass
    for path in directory.glob("shard-*.parquet"):
        try:
            found.add(read_header(path).fingerprint)
        except (DataError, OSError, ValueError):
            continue  # unreadable: rebuilt if it is ours
    return found


def make_room(spec: DatasetSpec, directory: str | pathlib.Path) -> pathlib.Path | None:
    """Moves another sample set out of `directory` so `spec`'s can be written there: a set of
    another checkpoint, sampler, seed or layout goes beside it (one of another size only is the
    same set, which `spec` shrinks or extends in place), to `<directory>-<its fingerprint>`
    (kept, never overwritten); a set of `spec` itself, finished or half-written, stays to be
    resumed. Returns where the other set went (None if nothing moved)."""
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        return None
    others = fingerprints_in(directory) - {spec.fingerprint()}
    if not others:
        return None
    base = f"{directory.name}-{min(others)[:12]}"
    target, suffix = directory.with_name(base), 1
    while target.exists():
        suffix += 1
        target = directory.with_name(f"{base}-{suffix}")
    directory.rename(target)
    return target


def generate_samples(
    run_dir: str | pathlib.Path,
    out_dir: str | pathlib.Path,
    *,
    n: int,
    sampler: SamplerSpec = DEFAULT_SAMPLER,
    step: int | None = None,
    rows_per_shard: int = ROWS_PER_SHARD,
    grid: int = 8,
    **options,
) -> Manifest:
    """Generates (or completes) the sample set in `out_dir` and writes `grid.png` of the first
    samples; a directory holding a different sample set is refused (DataError). `options`:
    seed, chunk_rows, distribute (see `sample_set_spec`)."""
    spec = sample_set_spec(
        run_dir, n=n, sampler=sampler, step=step, rows_per_shard=rows_per_shard, **options
    )
    manifest = prepare_dataset(spec, out_dir)
    first = open_dataset(out_dir).read(0, min(n, grid * grid)).values
    if manifest.kind == "image":
        render.save_image_grid(first, pathlib.Path(out_dir) / "grid.png", columns=grid)
    else:
        render.save_points(
            open_dataset(out_dir).read().values,
            pathlib.Path(out_dir) / "grid.png",
            reference=reference_points(Run(run_dir).dataset),
        )
    return manifest
