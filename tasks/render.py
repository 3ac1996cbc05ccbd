"""`render_outputs`: the GIF, the grid, the loss curve, and a report artifact that shows them.

Images appear in the Prefect UI as small PNGs embedded in a markdown artifact (data URIs): an
image artifact needs a URL, and nothing here serves files.
"""

from __future__ import annotations

import base64
import pathlib

import numpy as np
from prefect import task
from prefect.artifacts import create_markdown_artifact

from diffusion_lib import render
from diffusion_lib.data import open_dataset
from diffusion_lib.samplers import ddim_sample
from diffusion_lib.training import load_ema_model


def _embedded_png(path: pathlib.Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


@task(retries=1, retry_delay_seconds=5)
def render_outputs(run_dir: str, samples_dir: str, out_dir: str, step: int | None = None) -> dict:
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    restored = load_ema_model(run_dir, step)
    samples = open_dataset(samples_dir)
    shape = samples.example_shape
    if hasattr(restored.objective, "diffusion"):
        steps = 20
        result = ddim_sample(
            restored.model,
            restored.objective.diffusion,
            (64 if len(shape) == 3 else 1000, *shape),
            seed=0,
            num_steps=steps,
            frames=render.gif_frame_steps(steps, 16),
            clip_x0=(-1.0, 1.0) if len(shape) == 3 else None,
        )
        frames = result.frames.numpy()
    else:
        frames = None
    first = samples.read(0, min(len(samples), 64 if len(shape) == 3 else len(samples))).values
    if len(shape) == 3:
        render.save_image_grid(first, out / "grid.png")
        if frames is not None:
            render.sampling_gif(frames, out / "sampling.gif")
    else:
        render.save_points(first, out / "grid.png")
        if frames is not None:
            stats = open_dataset(restored.config.data_dir, verify="none").manifest.stats
            render.points_animation(
                frames * np.array(stats["std"]) + np.array(stats["mean"]), out / "sampling.gif"
            )
    metrics = pathlib.Path(run_dir) / "metrics.jsonl"
    if metrics.is_file():
        render.loss_curve_png(metrics, out / "loss.png")
    lines = [
        f"# Samples from `{run_dir}` (step {restored.step})",
        "",
        f"![samples]({_embedded_png(out / 'grid.png')})",
        "",
    ]
    if (out / "loss.png").is_file():
        lines += [f"![loss]({_embedded_png(out / 'loss.png')})", ""]
    lines += [
        f"- sampling GIF: `{out / 'sampling.gif'}`",
        f"- sample shards: `{samples_dir}`",
        f"- TensorBoard: `tensorboard --logdir {pathlib.Path(run_dir) / 'tensorboard'}`",
    ]
    create_markdown_artifact(
        markdown="\n".join(lines), key="sample-report", description="samples and training curve"
    )
    return {
        name: str(out / name)
        for name in ("grid.png", "sampling.gif", "loss.png")
        if (out / name).is_file()
    }
