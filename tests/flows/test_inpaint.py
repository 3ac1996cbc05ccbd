"""The `inpaint` flow on a trained 2-D run (imputation: given x, draw y) and on an image run:
the completion set, its report and pictures, resuming, and bad input refused before any work."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from diffusion_lib.data import open_dataset
from flows.cli import run_cli
from flows.inpaint import inpaint_flow
from tests.prefect_reads import artifacts_of

pytestmark = pytest.mark.cost(40)


@pytest.fixture()
def toy_run(toy_ddpm_run, tmp_path):
    """A copy of the shared toy run: the flow writes into its run directory."""
    shutil.copytree(toy_ddpm_run, tmp_path / "toy", ignore=shutil.ignore_patterns("inpaint"))
    return tmp_path / "toy"


def test_imputation_on_the_toy_run_writes_the_set_report_and_pictures(prefect_server, toy_run):
    where = {"preset": "tiny", "output_root": str(toy_run.parent), "run_name": toy_run.name}
    state = inpaint_flow(**where, images=50, completions=3, return_state=True)
    out = state.result()
    completions = open_dataset(out["completions"])
    assert len(completions) == 150 and completions.kind == "points"
    rows = completions.read().values
    extra = completions.read_extra(["original", "mask", "source_index", "mask_name", "completion"])
    test = open_dataset(toy_run / "data" / "test").read().values
    np.testing.assert_array_equal(extra["original"], test[extra["source_index"]])
    np.testing.assert_array_equal(rows[:, 0], extra["original"][:, 0])  # given x, bit for bit
    assert (extra["mask"] == [1.0, 0.0]).all() and set(extra["mask_name"]) == {"coordinate-known:0"}
    assert extra["completion"].tolist()[:6] == [0, 1, 2, 0, 1, 2]
    # The completions of one example differ; their drawn coordinate is not the original's.
    assert np.std(rows[:3, 1]) > 0 and not np.allclose(rows[:, 1], extra["original"][:, 1])

    report = json.loads((toy_run / "inpaint" / "metrics.json").read_text())
    methods = report["masks"]["coordinate-known:0"]
    assert set(methods) == {"completions", "mean fill", "nearest neighbour"}
    assert methods["completions"]["diversity"] > 0 == methods["mean fill"]["diversity"]
    # Quality is the benchmark's (benchmarks/inpainting.py): this run trained 200 steps.
    for entry in methods.values():
        assert 0 <= entry["precision"] <= 1 and entry["hidden_mse"] > 0
    for name in ("grid", "gif"):
        assert (toy_run / "inpaint" / "render").joinpath(out[name].split("/")[-1]).stat().st_size
    keys = {a.key for a in artifacts_of(state.state_details.flow_run_id)}
    assert {"inpaint-report", "inpaint-progress"} <= keys

    # Again: every shard is kept and the report read back, not computed again.
    before = {p.name: p.stat().st_mtime_ns for p in (toy_run / "inpaint").rglob("*") if p.is_file()}
    inpaint_flow(**where, images=50, completions=3)
    after = {p.name: p.stat().st_mtime_ns for p in (toy_run / "inpaint").rglob("*") if p.is_file()}
    kept = {name for name in before if name.startswith(("shard-", "manifest", "metrics"))}
    assert kept and all(before[name] == after[name] for name in kept)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--masks", "top-known"], "is for images"),
        (["--masks", "coordinate-known:3"], "coordinates 0 to 1"),
        (["--images", "5000"], "holds 1000 examples, not 5000"),
        (["--sampler", "dpm_solver_pp"], "cannot fill in given entries"),
        (["--reconstruction", "-1"], "reconstruction"),
        (["--chunk-examples", "0"], "chunk_examples: Input should be greater than 0"),
    ],
)
def test_bad_input_exits_2_naming_it_and_writes_nothing(
    prefect_server, toy_run, flags, message, capsys
):
    argv = ["--preset", "tiny", "--output-root", str(toy_run.parent), "--run-name", toy_run.name]
    with pytest.raises(SystemExit) as exited:
        run_cli(inpaint_flow, argv + flags)
    assert exited.value.code == 2 and message in capsys.readouterr().err
    assert not (toy_run / "inpaint" / "completions" / "manifest.json").exists()
    assert not list((toy_run / "inpaint").rglob("shard-*"))


@pytest.mark.system  # the longest inpainting test: kept out of the default run's 5-minute budget
def test_an_image_run_inpaints_with_a_png_mask_and_refuses_one_of_another_size(
    prefect_server, mnist_tiny_run, tmp_path, capsys
):
    run = tmp_path / "mnist"
    shutil.copytree(mnist_tiny_run, run)
    pixels = np.zeros((28, 28), np.uint8)
    pixels[:14] = 255
    Image.fromarray(pixels).save(tmp_path / "top.png")
    Image.fromarray(pixels[:20, :20]).save(tmp_path / "small.png")
    argv = ["--preset", "mnist-cpu", "--output-root", str(tmp_path), "--run-name", "mnist"]
    argv += ["--model", "ddpm", "--sampler", "ddpm", "--images", "4", "--completions", "2"]
    with pytest.raises(SystemExit) as exited:
        run_cli(inpaint_flow, argv + ["--masks", f"png:{tmp_path / 'small.png'}"])
    assert exited.value.code == 2 and "is 20x20 pixels; the images are 28x28" in (
        capsys.readouterr().err
    )
    out = run_cli(inpaint_flow, argv + ["--masks", f"png:{tmp_path / 'top.png'},centre-missing"])
    completions = open_dataset(out["completions"])
    values, extra = completions.read().values, completions.read_extra(["original", "mask"])
    assert values.shape == (16, 28, 28, 1) and values.dtype == np.uint8
    given = extra["mask"].astype(bool)
    np.testing.assert_array_equal(values[given], extra["original"][given])  # bit for bit
    assert given[:8, :14].all() and not given[:8, 14:].any()
