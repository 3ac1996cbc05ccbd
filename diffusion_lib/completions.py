"""Completion sets: held-out examples with part hidden by a mask, filled in k times by a run's
sampler (inpainting images, imputing coordinates of points), as Parquet datasets.

A completion set is a dataset, as a sample set is (source "diffusion_completions"): the same
shards, manifest, atomic and idempotent writes and reader. Its rows enumerate

    row = (m * images + i) * completions + c      mask m, held-out example i, completion c

with the completion as the row's example, the held-out example's label as its label, and beside
it the extra columns `original` (the held-out example), `mask` (1 given, 0 drawn, as uint8 for
images), `source_index` (its row in the run's test set; the examples are a seeded draw from
it), `mask_name` and `completion`. Rows are
drawn in chunks of `chunk_rows` (a multiple of `completions`), chunk j from seed [seed, j], so a
lost shard is drawn again bit for bit. The given entries of every completion are the original's,
bit for bit. Chunk 0 is drawn with its chain (the filling GIF's frames) and remembered in this
process (`draw.remember`), so the set's pictures do not draw it again.

    completion_set_spec(run_dir, masks=["top-known"], images=100, completions=4,
                        sampler=SamplerSpec.of("ddim", num_steps=100, eta=1.0)) -> DatasetSpec
    completion_set_in(directory, run_dir, **the same) -> DatasetSpec   # resumes a set there
"""

from __future__ import annotations

import functools
import json
import pathlib

import numpy as np

from diffusion_lib.data import DataError, DatasetSpec, open_dataset
from diffusion_lib.data.sources.base import Examples, check_range, register_source
from diffusion_lib.draw import (
    RECONSTRUCTION_FAMILIES,
    Given,
    check_compatible,
    draw,
    fills_in,
    preview_steps,
    remember,
)
from diffusion_lib.masks import MaskError, mask_of
from diffusion_lib.run import Run
from diffusion_lib.sample_sets import fingerprints_in
from diffusion_lib.samplers import SamplerSpec

ROWS_PER_SHARD = 400
# A chunk (one batch through the sampler) holds this many examples' completions: a larger
# batch keeps the cores busier per row, and memory holds one chunk. A set planned in the chunks
# of an earlier default is resumed in its own (`completion_set_in`).
CHUNK_EXAMPLES = 50
EARLIER_CHUNK_EXAMPLES = (10,)


def chunk_rows_for(images: int, completions: int, examples: int = CHUNK_EXAMPLES) -> int:
    """Rows of a chunk of `examples` examples' completions (fewer when the set is smaller)."""
    return min(images, examples) * completions


class DiffusionCompletions:
    """A source whose rows are completions of held-out examples, drawn on demand by chunk."""

    def __init__(
        self,
        split: str,
        *,
        run_dir: str,
        step: int,
        checkpoint: str,
        masks: list[str],
        images: int,
        completions: int,
        sampler: str,
        seed: int = 0,
        chunk_rows: int = 40,
        jump_length: int = 10,
        resamplings: int = 1,
        reconstruction: float = 0.0,
        **settings,
    ):
        self.run = Run(run_dir)
        if checkpoint != self.run.checkpoint_digest(step):
            raise DataError(
                f"checkpoint ckpt-{step} of {self.run.path} is not the one this completion set "
                "was planned from (it was trained again since); plan the set again"
            )
        try:
            self.spec = SamplerSpec.of(sampler, **settings)
            check_compatible(self.spec, self.run.objective)
        except ValueError as err:
            raise DataError(f"sampler: {err}") from None
        self.test = open_dataset(self.run.data_dir("test"))
        self.example_shape = self.run.example_shape
        self.kind = self.run.normalizer.kind
        self.has_labels = self.test.has_labels
        self.masks, self.images, self.completions = list(masks), images, completions
        self.seed, self.chunk_rows = seed, chunk_rows
        self.jump_length, self.resamplings = jump_length, resamplings
        self.reconstruction = float(reconstruction)
        self.step = step
        self.n = len(self.masks) * images * completions

    def __len__(self) -> int:
        return self.n

    def metadata(self) -> dict:
        return {
            "checkpoint": f"ckpt-{self.step}",
            "sampler": self.spec.to_dict(),
            "masks": self.masks,
            "images": self.images,
            "completions": self.completions,
            "seed": self.seed,
            "jump_length": self.jump_length,
            "resamplings": self.resamplings,
            "reconstruction": self.reconstruction,
        }

    @functools.cached_property
    def chosen(self) -> np.ndarray:
        """The held-out examples filled in: `images` rows of the test set in the order drawn
        from `seed` (a test split is often stored by class: the first rows are then of all)."""
        rng = np.random.default_rng(self.seed)
        return rng.choice(len(self.test), self.images, replace=False)

    @functools.cached_property
    def _originals(self) -> Examples:
        order = np.argsort(self.chosen)
        rows = self.test.read_rows(self.chosen[order])  # read in ascending order, then put back
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        labels = None if rows.labels is None else rows.labels[back]
        return Examples(rows.values[back], labels)

    def rows(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mask index, example index, completion index) of rows [start, stop)."""
        rows = np.arange(start, stop)
        return (
            rows // (self.images * self.completions),
            (rows // self.completions) % (self.images),
            rows % self.completions,
        )

    def masks_of(self, mask_index: np.ndarray, example: np.ndarray) -> np.ndarray:
        """Boolean masks [n, *example_shape]; a random mask is drawn from the example's index,
        so every completion of an example, and every re-run, sees the same one."""
        return np.stack(
            [self._mask(int(m), int(i)) for m, i in zip(mask_index, example, strict=True)]
        )

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - one source per set; a PNG read once
    def _mask(self, mask_index: int, example: int) -> np.ndarray:
        mask = mask_of(self.masks[mask_index], self.example_shape, seed=example)
        mask.setflags(write=False)
        return mask

    def draw_rows(self, chunk: int):
        """(Drawn, originals, masks, labels) of chunk `chunk`; chunk 0 with its chain at the
        `preview_steps` (drawn once in this process for the same set and checkpoint)."""
        start = chunk * self.chunk_rows
        stop = min(start + self.chunk_rows, self.n)
        mask_index, example, _ = self.rows(start, stop)
        originals = self._originals.values[example]
        masks = self.masks_of(mask_index, example)
        labels = None if self._originals.labels is None else self._originals.labels[example]
        restored = self.run.restore(self.step)
        if chunk:
            return self._draw(restored, chunk, originals, masks), originals, masks, labels
        key = ("completions", restored.identity, json.dumps(self.metadata(), sort_keys=True),
               self.n, self.chunk_rows)  # fmt: skip
        drawn = remember(
            key if restored.identity else None,
            lambda: self._draw(restored, 0, originals, masks, frames=preview_steps),
        )
        return drawn, originals, masks, labels

    def _draw(self, restored, chunk: int, originals, masks, *, frames=None):
        given = Given(
            originals,
            masks,
            jump_length=self.jump_length,
            resamplings=self.resamplings,
            reconstruction=self.reconstruction,
        )
        try:
            return draw(restored, self.spec, len(originals), [self.seed, chunk], frames=frames,
                        given=given)  # fmt: skip
        except ValueError as err:  # NaN or Inf in the samples
            raise DataError(f"chunk {chunk} of the completions: {err}") from None

    def read(self, start: int, stop: int) -> Examples:
        check_range(start, stop, self.n)
        parts: list[Examples] = []
        for chunk in range(start // self.chunk_rows, (max(stop, 1) - 1) // self.chunk_rows + 1):
            drawn, originals, masks, labels = self.draw_rows(chunk)
            first = chunk * self.chunk_rows
            lo, hi = max(start - first, 0), min(stop - first, len(drawn.samples))
            mask_index, example, completion = self.rows(first + lo, first + hi)
            values = drawn.samples if self.kind == "image" else drawn.samples.astype(np.float32)
            mask_values = masks[lo:hi].astype(np.uint8 if self.kind == "image" else np.float32)
            parts.append(
                Examples(
                    values[lo:hi],
                    None if labels is None else labels[lo:hi].astype(np.int64),
                    {
                        "original": originals[lo:hi],
                        "mask": mask_values,
                        "source_index": self.chosen[example].astype(np.int64),
                        "mask_name": np.asarray([self.masks[m] for m in mask_index]),
                        "completion": completion.astype(np.int64),
                    },
                )
            )
        return Examples(
            np.concatenate([p.values for p in parts]),
            None if parts[0].labels is None else np.concatenate([p.labels for p in parts]),
            {key: np.concatenate([p.extra[key] for p in parts]) for key in parts[0].extra},
        )


register_source("diffusion_completions")(DiffusionCompletions)


def completion_set_spec(
    run_dir: str | pathlib.Path,
    *,
    masks: list[str],
    images: int,
    completions: int,
    sampler: SamplerSpec,
    step: int | None = None,
    seed: int = 0,
    jump_length: int = 10,
    resamplings: int = 1,
    reconstruction: float = 0.0,
    chunk_rows: int | None = None,
    rows_per_shard: int = ROWS_PER_SHARD,
) -> DatasetSpec:
    """The DatasetSpec of a completion set, every input checked before anything is drawn:
    `masks` (specs of `diffusion_lib.masks`; a mask that gives all or nothing, or does not fit
    the data, is refused), `images` held-out examples (the first of the run's test set),
    `completions` draws of each, by `sampler` (one that can fill in given entries), from
    checkpoint `step` (default: the latest). `chunk_rows` defaults to CHUNK_EXAMPLES examples'
    completions.
    The examples are drawn from the test set by `seed`, as the completions are. `jump_length`
    and `resamplings` are RePaint's, `reconstruction` the weight of reconstruction guidance
    (`draw.reconstruction_guided`; DDPM runs' and the score-SDE samplers)."""
    if not (np.isfinite(reconstruction) and reconstruction >= 0):
        raise DataError(f"reconstruction must be a finite weight >= 0, got {reconstruction!r}")
    for name, value in (("images", images), ("completions", completions), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (name != "seed"):
            raise DataError(f"{name} must be a positive integer, got {value!r}")
    run = Run(run_dir)
    if not masks:
        raise DataError("masks: give at least one mask")
    shape = run.example_shape
    for spec in masks:
        try:
            mask_of(spec, shape, seed=0)
        except MaskError as err:
            raise DataError(f"masks: {err}") from None
    test = open_dataset(run.data_dir("test"))
    if images > len(test):
        raise DataError(f"images: the run's test set holds {len(test)} examples, not {images}")
    if not fills_in(sampler):
        raise DataError(f"sampler {sampler.name!r} cannot fill in given entries")
    if reconstruction and sampler.family not in RECONSTRUCTION_FAMILIES:
        raise DataError(
            f"reconstruction guidance is for DDPM runs' samplers and the score-SDE samplers, "
            f"not {sampler.name!r}"
        )
    chunk_rows = chunk_rows or chunk_rows_for(images, completions)
    if chunk_rows % completions:
        raise DataError(f"chunk_rows ({chunk_rows}) must be a multiple of completions")
    rows_per_shard = max(chunk_rows, rows_per_shard - rows_per_shard % chunk_rows)
    try:
        step = run.checkpoint(step)
    except FileNotFoundError as err:
        raise DataError(f"{err} to complete from") from None
    return DatasetSpec.create(
        "diffusion_completions",
        split="completions",
        rows_per_shard=rows_per_shard,
        row_group_size=min(1_000, rows_per_shard),
        run_dir=str(run_dir),
        checkpoint=run.checkpoint_digest(step),
        step=step,
        masks=list(masks),
        images=images,
        completions=completions,
        sampler=sampler.name,
        seed=seed,
        chunk_rows=chunk_rows,
        jump_length=jump_length,
        resamplings=resamplings,
        **({"reconstruction": float(reconstruction)} if reconstruction else {}),
        **dict(sampler.settings),
    )


def completion_set_in(directory: str | pathlib.Path, run_dir: str | pathlib.Path, **options):
    """`completion_set_spec(run_dir, **options)` for the set to write in `directory`: without a
    `chunk_rows` of the caller's, a set already there drawn in the chunks of an earlier default
    keeps them (resumed, or read back when finished) instead of being drawn again."""
    spec = completion_set_spec(run_dir, **options)
    held = fingerprints_in(pathlib.Path(directory))
    if options.get("chunk_rows") is not None or not held or spec.fingerprint() in held:
        return spec
    for examples in EARLIER_CHUNK_EXAMPLES:
        rows = chunk_rows_for(options["images"], options["completions"], examples)
        earlier = completion_set_spec(run_dir, **{**options, "chunk_rows": rows})
        if earlier.fingerprint() in held:
            return earlier
    return spec


# Hidden pixels in the "given" column of the grid: mid-grey, so a hole shows on any digit.
HOLE = 128


def render_completions(
    run_dir: str | pathlib.Path,
    completions_dir: str | pathlib.Path,
    out_dir: str | pathlib.Path,
    *,
    examples: int = 8,
) -> dict[str, pathlib.Path]:
    """Writes into `out_dir`, for the set's first mask: `grid.png` (images: a row per example,
    original | given | its completions; points: the completed points over the held-out data)
    and `filling.gif`, the chain of the set's first chunk filling the hole (remembered from the
    set's drawing in this process, or drawn again from the chunk's own seed: it ends on the
    completions the set holds)."""
    from diffusion_lib import render
    from diffusion_lib.reports import reference_points

    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    completions = open_dataset(completions_dir)
    options = {**completions.manifest.spec["options"], "run_dir": str(run_dir)}
    source = DiffusionCompletions("completions", **options)
    k = source.completions
    shown = min(examples, source.images, source.chunk_rows // k)
    drawn, originals, masks, _ = source.draw_rows(0)
    stored = completions.read(0, shown * k).values
    if not np.array_equal(drawn.samples[: shown * k].astype(stored.dtype), stored):
        raise DataError(f"{completions_dir}: the set's first chunk is not the one drawn now")
    grid, gif = out / "grid.png", out / "filling.gif"
    if source.kind == "image":
        rows = []
        for example in range(shown):
            first = example * k
            given = np.where(masks[first], originals[first], HOLE).astype(np.uint8)
            rows += [originals[first], given, *stored[first : first + k]]
        render.save_image_grid(np.stack(rows), grid, columns=2 + k, scale=2)
        frames = drawn.frames[:, : shown * k]
        render.sampling_gif(frames, gif, columns=k)
    else:
        reference = reference_points(source.run.dataset)
        render.save_points(completions.read().values, grid, reference=reference)
        render.points_animation(drawn.frames, gif, reference=reference)
    return {"grid": grid, "gif": gif}
