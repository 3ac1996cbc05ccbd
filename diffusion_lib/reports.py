"""The pictures of a trained run: sample grid, sampling GIF, loss curve and (2-D score models)
the learned score field. One call, files out; an orchestrator publishes them.

    render_run(run_dir, samples_dir, out_dir, step=None, sampler=SamplerSpec) -> RunRenders

The grid shows the first rows of the sample set itself; the GIF is their chain, kept with the
set's first chunk (frames denser near the end, the last one the samples). A stamp in out_dir
(`rendered-from.json`, written last) names what the files were rendered from, by content: a
re-run with the same inputs renders nothing.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import numpy as np
import tensorflow as tf

from diffusion_lib import render
from diffusion_lib._atomic import atomic_write_bytes
from diffusion_lib.data import open_dataset
from diffusion_lib.data.shards import file_sha256
from diffusion_lib.draw import draw, draw_chunk, preview_steps
from diffusion_lib.run import Run
from diffusion_lib.samplers import SamplerSpec
from diffusion_lib.training.checkpoints import read_marker

# What the files in out_dir were rendered from (written last): a re-run with the same inputs
# finds it and renders nothing.
STAMP = "rendered-from.json"
# Rows of samples in the grid and the sampling GIF of an image run (a column per class, or 8).
PREVIEW_ROWS = 8


@dataclasses.dataclass(frozen=True)
class RunRenders:
    step: int
    grid: pathlib.Path
    gif: pathlib.Path
    loss_curve: pathlib.Path | None
    score_field: pathlib.Path | None

    def paths(self) -> dict[str, str]:
        named = {
            "grid.png": self.grid,
            "sampling.gif": self.gif,
            "loss.png": self.loss_curve,
            "score_field.png": self.score_field,
        }
        return {name: str(path) for name, path in named.items() if path is not None}


def render_run(
    run_dir,
    samples_dir,
    out_dir,
    step: int | None = None,
    *,
    sampler: SamplerSpec,
) -> RunRenders:
    """Writes grid.png, sampling.gif, loss.png (if the run logged metrics) and, for 2-D score
    and score-SDE runs, score_field.png into `out_dir` (SDE runs: with probability-flow paths).
    The grid shows the sample set's first 64 images (or all its points); the GIF is the chain of
    those same samples, kept with the set's first chunk, when the set was drawn by `sampler` at
    this step with chunks of at least as many rows; otherwise its own chain by `sampler`, from
    seed 0, of 64 images or 1,000 points. A class-conditional run's images are shown one class a
    column (row r of a draw has label r mod K): K columns of 8 rows."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run = Run(run_dir)
    samples = open_dataset(samples_dir)
    log = run.training_log
    step = run.checkpoint(step)
    inputs = {  # by content: the checkpoint's marker (its files' checksums), the set's shards
        "step": step,
        "checkpoint": read_marker(run.checkpoints_dir, step),
        "sampler": sampler.to_dict(),
        "samples": [shard.sha256 for shard in samples.manifest.shards],
        "training_log": file_sha256(log) if log.is_file() else None,
    }
    done = _rendered(out, inputs)
    if done is not None:
        return done
    (out / STAMP).unlink(missing_ok=True)  # the files below are about to change
    restored = run.restore(step)
    images = restored.normalizer.is_image
    columns = restored.config.network.num_classes or 8
    shown = PREVIEW_ROWS * columns if images else 1000
    chain = _set_preview(restored, samples, sampler, shown)
    if chain is None:
        chain = draw(restored, sampler, shown, 0, frames=preview_steps).frames
    first = samples.read(0, min(len(samples), shown if images else len(samples))).values
    score_field = None
    if images:
        render.save_image_grid(first, out / "grid.png", columns=columns)
        render.sampling_gif(chain, out / "sampling.gif", columns=columns)
    else:
        data = reference_points(run.dataset)
        render.save_points(first, out / "grid.png", reference=data)
        render.points_animation(chain, out / "sampling.gif", reference=data)
        if restored.objective.family == "score":
            score_field = _score_field(restored, data, chain, out / "score_field.png")
        elif restored.objective.family == "sde":
            score_field = _flow_field(restored, data, out / "score_field.png")
    loss_curve = render.loss_curve_png(log, out / "loss.png") if log.is_file() else None
    renders = RunRenders(
        restored.step, out / "grid.png", out / "sampling.gif", loss_curve, score_field
    )
    stamp = {**inputs, "files": sorted(renders.paths())}
    atomic_write_bytes(out / STAMP, json.dumps(stamp, indent=2).encode())
    return renders


def _rendered(out: pathlib.Path, inputs: dict) -> RunRenders | None:
    """The renders already in `out` when its stamp names these inputs and every file it lists
    is there; None otherwise."""
    try:
        stamp = json.loads((out / STAMP).read_text())
    except (OSError, ValueError):
        return None
    files = stamp.pop("files", [])
    if stamp != json.loads(json.dumps(inputs)) or not all((out / f).is_file() for f in files):
        return None
    named = {f: out / f for f in files}
    return RunRenders(
        inputs["step"],
        out / "grid.png",
        out / "sampling.gif",
        named.get("loss.png"),
        named.get("score_field.png"),
    )


def _set_preview(restored, samples, sampler: SamplerSpec, shown: int) -> np.ndarray | None:
    """The chain of the sample set's first `shown` samples, kept with its first chunk (drawn
    with it in this process, or drawn again, the same bit for bit): the GIF then ends on the
    grid's samples. None when that chunk is smaller, or the set is not this run's by `sampler`
    at this step."""
    extra = samples.manifest.extra
    try:
        same = (
            SamplerSpec.from_dict(extra["sampler"]) == sampler
            and extra["step"] == restored.step
            and min(extra["chunk_rows"], len(samples)) >= shown
        )
    except (KeyError, TypeError, ValueError):
        return None
    if not same:
        return None
    drawn = draw_chunk(
        restored,
        sampler,
        n=len(samples),
        chunk_rows=extra["chunk_rows"],
        index=0,
        seed=extra["seed"],
    )
    return drawn.frames[:, :shown]


def reference_points(dataset, n: int = 2000) -> np.ndarray:
    """The first `n` points of a 2-D training set: what plots draw behind samples and fields."""
    return dataset.read(0, min(len(dataset), n)).values


def _score_field(restored, points, chain, path) -> pathlib.Path:
    """The learned score at the smallest noise level, in data coordinates (the normalizer's
    chain rule), over the data `points`, with 20 chain paths."""
    sigma_min = float(np.asarray(restored.objective.sigmas)[-1])
    normalizer = restored.normalizer

    def score_fn(x):
        z = normalizer.to_model(np.asarray(x, np.float32))
        sigma = tf.fill([len(z)], sigma_min)
        return normalizer.score_to_data(restored.model(tf.constant(z, tf.float32), sigma).numpy())

    return render.score_field_png(score_fn, points, path, trajectories=chain[:, :20])


def _flow_field(restored, points, path) -> pathlib.Path:
    """A score-SDE run's learned score at its smallest time, in data coordinates, over the data
    `points`, with 20 paths of its probability-flow ODE from the prior to the data (adaptive
    solver, 41 frames)."""
    sde, score = restored.objective.sde_view(restored.model)
    t = sde.default_eps
    paths = draw(restored, SamplerSpec.of("pf_ode"), 20, 1, frames=41).frames
    normalizer = restored.normalizer

    def score_fn(x):
        z = tf.constant(normalizer.to_model(np.asarray(x, np.float32)), tf.float32)
        return normalizer.score_to_data(score(z, tf.fill([len(x)], t)).numpy())

    return render.score_field_png(score_fn, points, path, trajectories=paths)
