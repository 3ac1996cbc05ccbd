"""reports.render_run: what a finished run's render directory holds, drawn from the sample set
and the run, and the same bytes when rendered again."""

import dataclasses

import imageio.v3 as iio
import pytest

from diffusion_lib import draw as draw_module
from diffusion_lib import render
from diffusion_lib.data import open_dataset
from diffusion_lib.draw import PREVIEW_FRAMES, draw
from diffusion_lib.reports import _set_preview, render_run
from diffusion_lib.run import Run
from diffusion_lib.sample_sets import generate_samples
from diffusion_lib.samplers import SamplerSpec
from diffusion_lib.training import config_preset, train

pytestmark = pytest.mark.cost(16)

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
    assert len(frames) == len(render.gif_frame_steps(5, PREVIEW_FRAMES)) == 6


def test_the_gif_is_the_chain_of_the_grids_samples_drawn_with_the_set(mnist_tiny_run, tmp_path):
    """A set whose first chunk holds the 64 images of the grid keeps their chain: the GIF's last
    frame is the grid's images, the chain is not drawn again while the chunk is remembered, and
    drawn again (a new process, a resumed job) it is the same bit for bit. Keeping the chain does
    not change the samples."""
    run = Run(mnist_tiny_run)
    restored = run.restore()
    draw_module.clear_memo()
    generate_samples(
        mnist_tiny_run,
        tmp_path / "samples",
        n=80,
        sampler=SAMPLER,
        chunk_rows=70,
        rows_per_shard=140,
    )
    samples = open_dataset(tmp_path / "samples")
    rows = samples.read(0, 64).values
    chain = _set_preview(restored, samples, SAMPLER, 64)
    assert chain.shape == (6, 64, 28, 28, 1)
    assert (chain[-1] == rows).all()
    # The same chunk with no chain kept: the same samples.
    plain = draw(restored, SAMPLER, 70, [0, 0]).samples
    assert (plain[:64] == rows).all() and plain.shape[0] == 70
    calls = []
    counted = dataclasses.replace(restored, model=_counting(restored.model, calls))
    assert (_set_preview(counted, samples, SAMPLER, 64) == chain).all() and calls == []
    first = render_run(mnist_tiny_run, tmp_path / "samples", tmp_path / "a", sampler=SAMPLER)
    draw_module.clear_memo()
    again = render_run(mnist_tiny_run, tmp_path / "samples", tmp_path / "b", sampler=SAMPLER)
    assert first.gif.read_bytes() == again.gif.read_bytes()
    # Too few rows in the first chunk, another sampler: the GIF draws a chain of its own.
    assert _set_preview(restored, samples, SAMPLER, 71) is None
    assert _set_preview(restored, samples, SamplerSpec.of("ddim", num_steps=4), 64) is None


def _counting(model, calls):
    def call(*args, **kw):
        calls.append(1)
        return model(*args, **kw)

    return call


def test_a_two_dimensional_diffusion_run_has_no_score_field(toy_ddpm_run, tmp_path):
    generate_samples(toy_ddpm_run, tmp_path / "samples", n=200, sampler=SAMPLER)
    renders = render_run(
        toy_ddpm_run, tmp_path / "samples", tmp_path / "r", step=100, sampler=SAMPLER
    )
    assert renders.step == 100 and renders.score_field is None
    assert set(renders.paths()) == {"grid.png", "sampling.gif", "loss.png"}


def test_rendered_again_from_the_same_inputs_nothing_is_redone(toy_ddpm_run, tmp_path, monkeypatch):
    """A re-run finds the render directory's stamp naming the same checkpoint, sampler, sample
    set and training log, and every file: nothing is restored, drawn or written. Another sampler,
    or a file gone, renders again."""
    from diffusion_lib import reports

    generate_samples(toy_ddpm_run, tmp_path / "samples", n=200, sampler=SAMPLER)
    first = render_run(toy_ddpm_run, tmp_path / "samples", tmp_path / "r", sampler=SAMPLER)
    written = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "r").iterdir()}
    assert reports.STAMP in written and len(written) == 4

    def must_not_run(*args, **kwargs):
        raise AssertionError("rendered again from the same inputs")

    with monkeypatch.context() as patched:
        patched.setattr(reports.Run, "restore", must_not_run)
        again = render_run(toy_ddpm_run, tmp_path / "samples", tmp_path / "r", sampler=SAMPLER)
    assert again == first
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "r").iterdir()} == written

    other = SamplerSpec.of("ddim", num_steps=4)
    render_run(toy_ddpm_run, tmp_path / "samples", tmp_path / "r", sampler=other)
    assert (tmp_path / "r" / "sampling.gif").stat().st_mtime_ns != written["sampling.gif"]
    (tmp_path / "r" / "loss.png").unlink()
    assert render_run(toy_ddpm_run, tmp_path / "samples", tmp_path / "r", sampler=other).loss_curve
    assert (tmp_path / "r" / "loss.png").is_file()


def test_a_two_dimensional_sde_run_draws_its_score_field_with_probability_flow_paths(
    toy_ddpm_run, tmp_path
):
    """A score-SDE run (30 steps of toy-sde-vp on the shared moons): its render holds the
    score field at the smallest time, with 20 paths of its probability-flow ODE on it."""
    config = config_preset(
        "toy-sde-vp",
        data_dir=str(toy_ddpm_run / "data" / "train"),
        network="mlp-tiny",
        num_steps=30,
        checkpoint_every=30,
        log_every=10,
    )
    train(config, tmp_path / "run")
    dpm = SamplerSpec.of("dpm_solver_pp", num_steps=5)
    generate_samples(tmp_path / "run", tmp_path / "samples", n=100, sampler=dpm)
    renders = render_run(tmp_path / "run", tmp_path / "samples", tmp_path / "a", sampler=dpm)
    assert set(renders.paths()) == {"grid.png", "sampling.gif", "loss.png", "score_field.png"}
    assert iio.imread(renders.score_field).shape == (480, 480, 3)


def test_a_class_conditional_image_run_renders_one_class_a_column(mnist_tiny_run, tmp_path):
    """Row r of a class-conditional draw has label r mod 10: the GIF and the grid have 10 columns
    (one digit each) of 8 rows, where an unconditional run has 8 x 8."""
    train(
        Run(mnist_tiny_run).config.replace(num_classes=10), tmp_path / "run"
    )  # the same, labelled
    generate_samples(tmp_path / "run", tmp_path / "samples", n=100, sampler=SAMPLER)
    renders = render_run(tmp_path / "run", tmp_path / "samples", tmp_path / "r", sampler=SAMPLER)
    cell = 28 * 2 + 1  # the GIF's and the grid's scale 2, one pixel of padding
    assert iio.imread(renders.gif, index=0).shape[:2] == (8 * cell + 1, 10 * cell + 1)
    assert iio.imread(renders.grid).shape[:2] == (8 * cell + 1, 10 * cell + 1)
