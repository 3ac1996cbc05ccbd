"""Sample sets (shards readable by the reader, identical regeneration, refusals) and rendering
(GIF frame counts and sizes, last frame = final samples, a 2-D animation that lands on the data)."""

import json

import imageio.v3 as iio
import numpy as np
import pytest
import tensorflow as tf

from diffusion_lib import render
from diffusion_lib.analytic import GaussianMixture
from diffusion_lib.data import DataError, DatasetSpec, open_dataset, prepare_dataset
from diffusion_lib.run import Run
from diffusion_lib.sample_sets import generate_samples
from diffusion_lib.samplers import SamplerSpec, annealed_langevin_dynamics, ddim_sample
from diffusion_lib.schedules import sigma_schedule
from diffusion_lib.training import config_preset, train


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    prepare_dataset(DatasetSpec.create("moons", n=4_000), root / "moons")
    train(
        config_preset(
            "toy-ddpm",
            data_dir=str(root / "moons"),
            network="mlp-tiny",
            num_steps=200,
            checkpoint_every=200,
            log_every=50,
        ),
        root / "run",
    )
    return root


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    prepare_dataset(DatasetSpec.create("mnist_embedded", split="test"), root / "mnist")
    train(
        config_preset(
            "mnist-ddpm-tiny",
            data_dir=str(root / "mnist"),
            num_timesteps=50,
            batch_size=8,
            num_steps=2,
            checkpoint_every=2,
            log_every=1,
        ),
        root / "run",
    )
    return root


def test_sample_set_is_a_dataset_and_regenerates_identically(toy_run):
    out = toy_run / "samples"
    manifest = generate_samples(
        toy_run / "run", out, n=2_500, sampler=SamplerSpec.of("ddpm"), rows_per_shard=1_000
    )
    assert manifest.num_examples == 2_500 and [s.rows for s in manifest.shards] == [
        1_000,
        1_000,
        500,
    ]
    assert manifest.extra["checkpoint"] == "ckpt-200" and manifest.extra["sampler"] == {
        "name": "ddpm"
    }
    values = open_dataset(out, verify="checksum").read().values
    assert values.shape == (2_500, 2) and np.all(np.isfinite(values))
    batches = list(open_dataset(out).stream(500, num_epochs=1))
    assert len(batches) == 5
    header = json.loads(
        __import__("pyarrow.parquet", fromlist=["x"])
        .read_metadata(out / manifest.shards[1].file)
        .metadata[b"diffusion_lib"]
    )
    assert header["extra"]["seed"] == 0 and header["extra"]["step"] == 200
    (out / manifest.shards[1].file).unlink()
    again = generate_samples(
        toy_run / "run", out, n=2_500, sampler=SamplerSpec.of("ddpm"), rows_per_shard=1_000
    )
    assert again.shards == manifest.shards  # the rebuilt shard is byte-identical
    assert (out / "grid.png").is_file()


def test_sample_set_refusals(toy_run, tmp_path):
    ddim = SamplerSpec.of("ddim", num_steps=5)
    generate_samples(toy_run / "run", tmp_path / "s", n=100, sampler=ddim)
    with pytest.raises(DataError, match="holds a different dataset"):
        generate_samples(toy_run / "run", tmp_path / "s", n=100, sampler=ddim.replace(num_steps=6))
    with pytest.raises(DataError, match="n must be a positive integer"):
        generate_samples(toy_run / "run", tmp_path / "t", n=0)
    with pytest.raises(ValueError, match="sampler must be one of"):
        SamplerSpec.of("euler")
    with pytest.raises(DataError, match=r"num_steps must be in \[1, 100\]"):
        generate_samples(toy_run / "run", tmp_path / "t", n=10, sampler=ddim.replace(num_steps=500))
    langevin = SamplerSpec.of("annealed_langevin")
    with pytest.raises(DataError, match="needs a score model; this run trains a diffusion model"):
        generate_samples(toy_run / "run", tmp_path / "t", n=10, sampler=langevin)
    with pytest.raises(DataError, match="no complete checkpoint for step 7"):
        generate_samples(toy_run / "run", tmp_path / "t", n=10, step=7)
    assert not (tmp_path / "t").exists() or not list((tmp_path / "t").glob("*.parquet"))


def test_image_sample_set_and_grid(image_run):
    manifest = generate_samples(
        image_run / "run", image_run / "samples", n=20, sampler=SamplerSpec.of("ddim", num_steps=5)
    )
    assert (
        manifest.kind == "image"
        and manifest.example_shape == (28, 28, 1)
        and manifest.dtype == "uint8"
    )
    grid = iio.imread(image_run / "samples" / "grid.png")
    assert grid.shape[:2] == (3 * (56 + 1) + 1, 8 * (56 + 1) + 1)  # 20 images, 8 columns, scale 2


def test_sampling_gif_frames_size_and_last_frame(image_run):
    restored = Run(image_run / "run").restore()
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
        result.frames.numpy(), image_run / "sampling.gif", columns=4, scale=2, hold_last=5
    )
    gif = iio.imread(image_run / "sampling.gif", index=None)
    assert gif.shape[0] == info.frames == len(steps)
    from PIL import Image

    with Image.open(image_run / "sampling.gif") as handle:
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
        mixture.score, start, sigma_schedule(20.0, 1.0, 20), 100, 0.1, seed=0, frames=12
    )
    frames = result.frames.numpy()
    info = render.points_animation(frames, tmp_path / "points.gif", hold_last=3, size_px=160)
    assert iio.imread(tmp_path / "points.gif", index=None).shape[0] == info.frames == 12
    np.testing.assert_array_equal(frames[-1], result.samples.numpy())
    assert abs(np.mean(frames[-1].sum(1) < 0) - 0.2) < 0.03
    assert np.all(np.abs(frames[-1][frames[-1].sum(1) > 0].mean(0) - 5.0) < 0.2)


def test_score_field_and_loss_curve_pngs(toy_run, tmp_path):
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
    render.loss_curve_png(toy_run / "run" / "metrics.jsonl", tmp_path / "loss.png")
    assert iio.imread(tmp_path / "loss.png").shape[:2] == (480, 480)
    with pytest.raises(ValueError, match="score_fn must return finite values"):
        render.score_field_png(lambda p: p[:, :1], data, tmp_path / "bad.png")
