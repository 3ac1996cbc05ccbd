"""The pictures of a trained run: sample grid, sampling GIF, loss curve and (2-D score models)
the learned score field. One call, files out; an orchestrator publishes them.

    render_run(run_dir, samples_dir, out_dir, step=None) -> RunRenders

The GIF is a fresh, small chain from the same EMA weights and sampler settings the sample set
used (frames denser near the end): DDIM (`num_steps`, `eta`) for DDPM runs, annealed Langevin
dynamics (`steps_per_level`, `step_lr`) for score runs. The grid shows the first rows of the sample set itself.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
import tensorflow as tf

from diffusion_lib import render
from diffusion_lib.data import open_dataset
from diffusion_lib.samplers import annealed_langevin_dynamics, ddim_sample
from diffusion_lib.training import load_ema_model

GIF_FRAMES = 16


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


def _chain_frames(
    restored, shape, steps_per_level: int, step_lr: float, num_steps: int, eta: float
) -> np.ndarray:
    """[F, B, ...] frames of a short sampling chain, in the model's data space."""
    batch = 64 if len(shape) == 3 else 1000
    objective = restored.objective
    if hasattr(objective, "diffusion"):
        result = ddim_sample(
            restored.model,
            objective.diffusion,
            (batch, *shape),
            seed=0,
            num_steps=num_steps,
            eta=eta,
            frames=render.gif_frame_steps(num_steps, GIF_FRAMES),
            clip_x0=(-1.0, 1.0) if len(shape) == 3 else None,
        )
    else:
        sigmas = np.asarray(objective.sigmas)
        start = tf.random.stateless_normal((batch, *shape), [0, 0]) * float(sigmas[0])
        total = len(sigmas) * steps_per_level
        result = annealed_langevin_dynamics(
            restored.model,
            start,
            sigmas,
            steps_per_level,
            step_lr,
            seed=0,
            denoise_final=True,
            frames=render.gif_frame_steps(total, GIF_FRAMES),
        )
    return result.frames.numpy()


def render_run(
    run_dir,
    samples_dir,
    out_dir,
    step: int | None = None,
    *,
    steps_per_level: int = 5,
    step_lr: float = 2e-5,
    num_steps: int = 20,
    eta: float = 0.0,
) -> RunRenders:
    """Writes grid.png, sampling.gif, loss.png (if the run logged metrics) and, for 2-D score
    runs, score_field.png into `out_dir`. `steps_per_level` and `step_lr` set the GIF's
    annealed Langevin chain for score runs, `num_steps` and `eta` its DDIM chain for DDPM runs."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    restored = load_ema_model(run_dir, step)
    samples = open_dataset(samples_dir)
    shape = samples.example_shape
    images = len(shape) == 3
    frames = _chain_frames(restored, shape, steps_per_level, step_lr, num_steps, eta)
    first = samples.read(0, min(len(samples), 64 if images else len(samples))).values
    score_field = None
    if images:
        render.save_image_grid(first, out / "grid.png")
        render.sampling_gif(frames, out / "sampling.gif")
    else:
        data = open_dataset(restored.config.data_dir, verify="none")
        mean, std = np.array(data.manifest.stats["mean"]), np.array(data.manifest.stats["std"])
        render.save_points(first, out / "grid.png")
        render.points_animation(frames * std + mean, out / "sampling.gif")
        if not hasattr(restored.objective, "diffusion"):
            score_field = _score_field(restored, data, frames, mean, std, out / "score_field.png")
    metrics = pathlib.Path(run_dir) / "metrics.jsonl"
    loss_curve = render.loss_curve_png(metrics, out / "loss.png") if metrics.is_file() else None
    return RunRenders(
        restored.step, out / "grid.png", out / "sampling.gif", loss_curve, score_field
    )


def _score_field(restored, data, frames, mean, std, path) -> pathlib.Path:
    """The learned score at the smallest noise level, in data coordinates, with 20 chain paths.

    The network works on standardised points z = (x - mean) / std, so the score in x is
    score_z / std (chain rule)."""
    sigma_min = float(np.asarray(restored.objective.sigmas)[-1])
    points = data.read(0, min(len(data), 2000)).values

    def score_fn(x):
        z = (np.asarray(x, np.float32) - mean) / std
        sigma = tf.fill([len(z)], sigma_min)
        return restored.model(tf.constant(z, tf.float32), sigma).numpy() / std

    paths = frames[:, :20] * std + mean  # [F, 20, 2]
    return render.score_field_png(score_fn, points, path, trajectories=paths)
