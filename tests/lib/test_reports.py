"""reports.render_run: what a finished run's render directory holds, drawn from the sample set
and the run, and the same bytes when rendered again."""

import imageio.v3 as iio

from diffusion_lib import render
from diffusion_lib.data import open_dataset
from diffusion_lib.reports import GIF_FRAMES, render_run
from diffusion_lib.sample_sets import generate_samples
from diffusion_lib.samplers import SamplerSpec

SAMPLER = SamplerSpec.of("ddim", num_steps=5)


def test_an_image_run_renders_grid_gif_and_loss_the_same_twice(mnist_tiny_run, tmp_path):
    generate_samples(mnist_tiny_run, tmp_path / "samples", n=16, sampler=SAMPLER)
    first = render_run(mnist_tiny_run, tmp_path / "samples", tmp_path / "a", sampler=SAMPLER)
    again = render_run(mnist_tiny_run, tmp_path / "samples", tmp_path / "b", sampler=SAMPLER)
    assert set(first.paths()) == {"grid.png", "sampling.gif", "loss.png"}
    assert first.score_field is None and first.step == 2
    for name, path in first.paths().items():
        assert (tmp_path / "b" / name).read_bytes() == open(path, "rb").read(), name
    assert again.paths().keys() == first.paths().keys()

    # The grid is the sample set's first images (not the GIF's chain).
    render.save_image_grid(
        open_dataset(tmp_path / "samples").read(0, 16).values, tmp_path / "g.png"
    )
    assert (tmp_path / "g.png").read_bytes() == first.grid.read_bytes()
    # The GIF: one frame per chain step gif_frame_steps picks (here all 6 of a 5-step chain).
    frames = iio.imread(first.gif, index=None)
    assert len(frames) == len(render.gif_frame_steps(5, GIF_FRAMES)) == 6


def test_a_two_dimensional_diffusion_run_has_no_score_field(toy_ddpm_run, tmp_path):
    generate_samples(toy_ddpm_run, tmp_path / "samples", n=200, sampler=SAMPLER)
    renders = render_run(
        toy_ddpm_run, tmp_path / "samples", tmp_path / "r", step=100, sampler=SAMPLER
    )
    assert renders.step == 100 and renders.score_field is None
    assert set(renders.paths()) == {"grid.png", "sampling.gif", "loss.png"}
