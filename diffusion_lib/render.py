"""Pictures of the models at work: sampling GIFs, image grids, 2-D animations, score fields,
loss curves. Files are written atomically (temporary name, then rename).

    sampling_gif        a grid of one sampling run, frame by frame, from noise to images
    gif_frame_steps     chain steps for GIF frames, denser near the end where structure appears
    save_image_grid     PNG grid of images
    points_animation    a 2-D point cloud moving from noise to the data, as a GIF
    score_field_png     a score model's vector field over the data, with Langevin paths on it
    save_points         a scatter PNG of 2-D points
    loss_curve_png      the training loss from a run's metrics.jsonl

Matplotlib is used through its object API with the Agg canvas: no global backend, no display.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Callable

import imageio.v3 as iio
import numpy as np

from diffusion_lib._atomic import atomic_write_bytes
from diffusion_lib.normalizer import IMAGES


def to_uint8(images) -> np.ndarray:
    """Float images in [-1, 1] (or uint8 as is) -> uint8."""
    images = np.asarray(images)
    return images if images.dtype == np.uint8 else IMAGES.to_data(images)


def image_grid(images, columns: int = 8, scale: int = 1, pad: int = 1) -> np.ndarray:
    """[N, H, W, C] -> one [rows * (H*scale + pad) + pad, ..., C] uint8 image, nearest upscaling."""
    images = to_uint8(images)
    if images.ndim != 4:
        raise ValueError(f"images must have shape [N, H, W, C], got {images.shape}")
    n, h, w, c = images.shape
    columns = max(1, min(columns, n))
    rows = -(-n // columns)
    images = images.repeat(scale, axis=1).repeat(scale, axis=2)
    hs, ws = h * scale, w * scale
    canvas = np.zeros((rows * (hs + pad) + pad, columns * (ws + pad) + pad, c), np.uint8)
    for k in range(n):
        r, q = divmod(k, columns)
        canvas[
            pad + r * (hs + pad) : pad + r * (hs + pad) + hs,
            pad + q * (ws + pad) : pad + q * (ws + pad) + ws,
        ] = images[k]
    return canvas


def _png_bytes(image: np.ndarray) -> bytes:
    return iio.imwrite(
        "<bytes>", image[..., 0] if image.shape[-1] == 1 else image, extension=".png"
    )


def save_image_grid(images, path, columns: int = 8, scale: int = 2) -> pathlib.Path:
    atomic_write_bytes(path, _png_bytes(image_grid(images, columns, scale)))
    return pathlib.Path(path)


def gif_frame_steps(num_steps: int, num_frames: int, power: float = 2.0) -> list[int]:
    """Chain steps 0..num_steps for `num_frames` frames, spaced as 1 - (1 - u)^power: a sampling
    chain shows its structure in the last steps, so frames crowd there."""
    if num_frames < 2:
        raise ValueError(f"num_frames must be at least 2, got {num_frames}")
    u = np.linspace(0.0, 1.0, num_frames)
    steps = np.rint(num_steps * (1.0 - (1.0 - u) ** power)).astype(int)
    return sorted(set(steps.tolist()))


@dataclasses.dataclass(frozen=True)
class GifInfo:
    path: pathlib.Path
    frames: int
    height: int
    width: int
    seconds: float  # total play time, the held last frame included


def _write_gif(frames: list[np.ndarray], path, duration: float, hold_last: int) -> None:
    """The last frame is held by giving it (1 + hold_last) times the duration: GIF writers merge
    repeated identical frames, so repeating it would not survive."""
    squeezed = [f[..., 0] if f.ndim == 3 and f.shape[-1] == 1 else f for f in frames]
    durations = [duration * 1000] * (len(squeezed) - 1) + [duration * 1000 * (1 + hold_last)]
    data = iio.imwrite("<bytes>", np.stack(squeezed), extension=".gif", duration=durations, loop=0)
    atomic_write_bytes(path, data)


def sampling_gif(
    frames, path, *, columns: int = 8, scale: int = 2, hold_last: int = 10, duration: float = 0.08
) -> GifInfo:
    """frames [F, B, H, W, C] (a sampler's trajectory) -> a GIF of the grid, last frame held.
    `scale` 2, the sample grid's: a chain's noisy frames compress poorly, and at this scale
    the main job's GIF stays small enough for the run summary to embed it in the Prefect UI."""
    frames = np.asarray(frames)
    if frames.ndim != 5:
        raise ValueError(f"frames must have shape [F, B, H, W, C], got {frames.shape}")
    grids = [image_grid(f, columns, scale) for f in frames]
    _write_gif(grids, path, duration, hold_last)
    seconds = duration * (len(grids) + hold_last)
    return GifInfo(pathlib.Path(path), len(grids), grids[0].shape[0], grids[0].shape[1], seconds)


def _figure(size_px: int, *, labelled: bool = False):
    """A square figure; `labelled` ones (axes with ticks and labels, made by add_subplot) get a
    constrained layout, which sizes the axes so every label fits inside the image (without it a
    log axis's tick labels were cut off at the left edge)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    layout = "constrained" if labelled else None
    figure = Figure(figsize=(size_px / 100, size_px / 100), dpi=100, layout=layout)
    FigureCanvasAgg(figure)
    return figure


def _figure_array(figure) -> np.ndarray:
    figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()


def _bounds(points: np.ndarray, margin: float = 0.1) -> tuple[float, float, float, float]:
    lo, hi = points.min(0), points.max(0)
    span = np.maximum(hi - lo, 1e-6)
    return (
        lo[0] - margin * span[0],
        hi[0] + margin * span[0],
        lo[1] - margin * span[1],
        hi[1] + margin * span[1],
    )


def points_animation(
    frames,
    path,
    *,
    bounds=None,
    reference=None,
    hold_last: int = 10,
    size_px: int = 320,
    duration: float = 0.08,
) -> GifInfo:
    """frames [F, N, 2] -> a GIF of the cloud moving (e.g. noise to swiss roll), over the real
    data `reference` [M, 2] drawn faintly when given."""
    frames = np.asarray(frames, dtype=np.float64)
    if frames.ndim != 3 or frames.shape[-1] != 2:
        raise ValueError(f"frames must have shape [F, N, 2], got {frames.shape}")
    x0, x1, y0, y1 = bounds or _bounds(frames[-1], 0.3)
    images = []
    for k, points in enumerate(frames):
        figure = _figure(size_px)
        axes = figure.add_axes([0, 0, 1, 1])
        if reference is not None:
            _reference_behind(axes, reference)
        axes.scatter(points[:, 0], points[:, 1], s=2, alpha=0.5, color="tab:blue")
        axes.set_xlim(x0, x1)
        axes.set_ylim(y0, y1)
        axes.set_axis_off()
        axes.text(0.02, 0.96, f"frame {k + 1}/{len(frames)}", transform=axes.transAxes, fontsize=8)
        images.append(_figure_array(figure))
    _write_gif(images, path, duration, hold_last)
    seconds = duration * (len(images) + hold_last)
    return GifInfo(pathlib.Path(path), len(images), images[0].shape[0], images[0].shape[1], seconds)


def score_field_png(
    score_fn: Callable,
    data,
    path,
    *,
    bounds=None,
    grid: int = 21,
    trajectories=None,
    size_px: int = 480,
) -> pathlib.Path:
    """Quiver plot of score_fn (points [M, 2] -> [M, 2]) over the data range, the data under it,
    and optional Langevin trajectories [T, K, 2] drawn on top (the score-matching tutorials' figure)."""
    data = np.asarray(data, dtype=np.float64)
    x0, x1, y0, y1 = bounds or _bounds(data, 0.2)
    gx, gy = np.meshgrid(np.linspace(x0, x1, grid), np.linspace(y0, y1, grid))
    points = np.stack([gx.ravel(), gy.ravel()], axis=1)
    field = np.asarray(score_fn(points), dtype=np.float64)
    if field.shape != points.shape or not np.all(np.isfinite(field)):
        raise ValueError(
            f"score_fn must return finite values of shape {points.shape}, got {field.shape}"
        )
    norm = np.linalg.norm(field, axis=1, keepdims=True)
    unit = field / np.maximum(norm, 1e-12)  # direction only; length would hide the far field
    figure = _figure(size_px, labelled=True)
    axes = figure.add_subplot(1, 1, 1)
    axes.scatter(data[:, 0], data[:, 1], s=1, alpha=0.3, color="tab:gray")
    axes.quiver(
        points[:, 0],
        points[:, 1],
        unit[:, 0],
        unit[:, 1],
        np.log1p(norm[:, 0]),
        cmap="viridis",
        angles="xy",
        scale_units="xy",
        scale=grid / max(x1 - x0, 1e-9) * 1.5,
        width=0.004,
    )
    if trajectories is not None:
        for path_k in np.transpose(np.asarray(trajectories), (1, 0, 2)):
            axes.plot(path_k[:, 0], path_k[:, 1], color="tab:red", linewidth=0.8, alpha=0.8)
            axes.scatter(path_k[-1:, 0], path_k[-1:, 1], s=8, color="tab:red")
    axes.set_xlim(x0, x1)
    axes.set_ylim(y0, y1)
    axes.set_title("score field (direction; colour = log(1 + |score|))", fontsize=9)
    atomic_write_bytes(path, _png_bytes(_figure_array(figure)))
    return pathlib.Path(path)


def _reference_behind(axes, reference) -> None:
    """The real data in light grey under what is drawn next, so a reader sees where samples
    miss it (a disc over a spiral) without reading a metric."""
    reference = np.asarray(reference, dtype=np.float64)
    axes.scatter(
        reference[:, 0], reference[:, 1], s=2, alpha=0.35, color="0.7", linewidths=0, label="data"
    )


def save_points(points, path, *, reference=None, size_px: int = 400) -> pathlib.Path:
    """A scatter PNG of points [N, 2]; `reference` [M, 2] (the real data) is drawn faintly
    behind them, with a legend."""
    points = np.asarray(points, dtype=np.float64)
    figure = _figure(size_px, labelled=True)
    axes = figure.add_subplot(1, 1, 1)
    if reference is not None:
        _reference_behind(axes, reference)
    # Fainter as they grow past a thousand, so the data behind 10,000 samples still shows.
    alpha = 0.6 * min(1.0, (1000 / max(len(points), 1)) ** 0.5)
    axes.scatter(points[:, 0], points[:, 1], s=1.5, alpha=alpha, color="tab:blue", label="samples")
    if reference is not None:
        axes.legend(loc="upper right", fontsize=7, markerscale=4, framealpha=0.8)
    axes.set_aspect("equal", adjustable="datalim")
    atomic_write_bytes(path, _png_bytes(_figure_array(figure)))
    return pathlib.Path(path)


def loss_curve_png(metrics_jsonl, path, *, size_px: int = 480) -> pathlib.Path:
    """The loss (and learning rate) against the step, from a run's metrics.jsonl."""
    rows = [
        json.loads(line)
        for line in pathlib.Path(metrics_jsonl).read_text().splitlines()
        if line.strip()
    ]
    if not rows:
        raise ValueError(f"{metrics_jsonl}: no metrics rows")
    steps = [r["step"] for r in rows]
    figure = _figure(size_px, labelled=True)
    axes = figure.add_subplot(1, 1, 1)
    losses = [r["loss"] for r in rows]
    axes.plot(steps, losses, label="loss")
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    if min(losses) > 0:  # sliced score matching's loss is negative: a log axis cannot show it
        axes.set_yscale("log")
    axes.grid(alpha=0.3)
    axes.set_title(f"training loss ({len(rows)} reports)", fontsize=9)
    atomic_write_bytes(path, _png_bytes(_figure_array(figure)))
    return pathlib.Path(path)


__all__ = [
    "GifInfo",
    "gif_frame_steps",
    "image_grid",
    "loss_curve_png",
    "points_animation",
    "sampling_gif",
    "save_image_grid",
    "save_points",
    "score_field_png",
    "to_uint8",
]
