"""Rendering: GIF frame counts and sizes, the last frame being the final samples, a 2-D animation
that lands on the data, score fields and loss curves."""

import imageio.v3 as iio
import numpy as np
import pytest
import tensorflow as tf

from diffusion_lib import render
from diffusion_lib.analytic import GaussianMixture
from diffusion_lib.run import Run
from diffusion_lib.samplers import annealed_langevin_dynamics, ddim_sample
from diffusion_lib.schedules import sigma_schedule


def test_sampling_gif_frames_size_and_last_frame(mnist_tiny_run, tmp_path):
    restored = Run(mnist_tiny_run).restore()
    steps = render.gif_frame_steps(20, 8)
    assert (
        steps[0] == 0 and steps[-1] == 20 and np.diff(steps)[-1] <= np.diff(steps)[0]
    )  # denser at the end
    result = ddim_sample(
        restored.model,
        restored.objective.diffusion,
        (16, 28, 28, 1),
        seed=0,
        num_steps=20,
        frames=steps,
        clip_x0=(-1.0, 1.0),
    )
    info = render.sampling_gif(
        result.frames.numpy(), tmp_path / "sampling.gif", columns=4, scale=2, hold_last=5
    )
    gif = iio.imread(tmp_path / "sampling.gif", index=None)
    assert gif.shape[0] == info.frames == len(steps)
    from PIL import Image

    with Image.open(tmp_path / "sampling.gif") as handle:
        handle.seek(info.frames - 1)
        assert handle.info["duration"] == pytest.approx(
            80 * 6
        )  # the last frame held 5 more frames' time
    assert gif.shape[1:3] == (4 * 57 + 1, 4 * 57 + 1)
    expected = render.image_grid(result.samples.numpy(), columns=4, scale=2)[..., 0]
    last = gif[-1] if gif.ndim == 3 else gif[-1][..., 0]
    np.testing.assert_array_equal(last, expected)


def test_points_animation_lands_on_the_target(tmp_path):
    """Annealed Langevin with the exact score of a two-mode mixture: the animation's last frame
    is the sample set, whose mode weights match 0.2 / 0.8."""
    mixture = GaussianMixture([0.2, 0.8], [[-5.0, -5.0], [5.0, 5.0]], [1.0, 1.0])
    start = tf.random.stateless_uniform([3000, 2], [1, 2], -8.0, 8.0)
    result = annealed_langevin_dynamics(
        mixture.score,
        start,
        sigma_schedule(20.0, 1.0, 20),
        steps_per_level=100,
        step_lr=0.1,
        seed=0,
        frames=12,
        denoise_final=False,
    )
    frames = result.frames.numpy()
    info = render.points_animation(frames, tmp_path / "points.gif", hold_last=3, size_px=160)
    assert iio.imread(tmp_path / "points.gif", index=None).shape[0] == info.frames == 12
    np.testing.assert_array_equal(frames[-1], result.samples.numpy())
    assert abs(np.mean(frames[-1].sum(1) < 0) - 0.2) < 0.03
    assert np.all(np.abs(frames[-1][frames[-1].sum(1) > 0].mean(0) - 5.0) < 0.2)


def test_score_field_and_loss_curve_pngs(toy_ddpm_run, tmp_path):
    mixture = GaussianMixture([0.5, 0.5], [[-2.0, 0.0], [2.0, 0.0]], [0.5, 0.5])
    data, _ = mixture.sample(500, seed=0)
    paths = tf.stack([tf.zeros([4, 2]) + k * 0.1 for k in range(5)]).numpy()
    render.score_field_png(
        lambda p: mixture.score(tf.constant(p)).numpy(),
        data,
        tmp_path / "field.png",
        trajectories=paths,
    )
    image = iio.imread(tmp_path / "field.png")
    assert image.shape[:2] == (480, 480) and image.std() > 10
    render.loss_curve_png(toy_ddpm_run / "metrics.jsonl", tmp_path / "loss.png")
    assert iio.imread(tmp_path / "loss.png").shape[:2] == (480, 480)
    with pytest.raises(ValueError, match="score_fn must return finite values"):
        render.score_field_png(lambda p: p[:, :1], data, tmp_path / "bad.png")


def test_a_negative_loss_curve_is_drawn_on_a_linear_axis(tmp_path):
    """Sliced score matching's loss is negative; a log axis would draw nothing (and warn)."""
    import json
    import warnings

    rows = [{"step": k, "loss": -1.0 - 0.1 * k} for k in range(1, 20)]
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("\n".join(json.dumps(r) for r in rows))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        render.loss_curve_png(metrics, tmp_path / "loss.png")
    assert iio.imread(tmp_path / "loss.png").std() > 10


@pytest.mark.parametrize(
    "losses",
    [
        [0.5 * 0.9**k for k in range(40)],  # log axis, tick labels like 2 x 10^-1
        [-1234.5 - 10.0 * k for k in range(40)],  # linear axis, long negative labels
    ],
)
def test_loss_curve_labels_fit_inside_the_image(tmp_path, losses):
    """Nothing touches the image's edge: a label cut off there is what the tight default layout
    drew (measured before the fix: 17 dark pixels in the first column of the tiny run's plot)."""
    import json

    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(
        "\n".join(json.dumps({"step": 10 * k, "loss": v}) for k, v in enumerate(losses))
    )
    image = iio.imread(render.loss_curve_png(metrics, tmp_path / "loss.png"))[..., :3]
    ink = (image < 250).any(-1)
    border = np.concatenate(
        [ink[:2].ravel(), ink[-2:].ravel(), ink[:, :2].ravel(), ink[:, -2:].ravel()]
    )
    assert not border.any()
    assert ink[:, : image.shape[1] // 8].any()  # the y labels are there, inside
