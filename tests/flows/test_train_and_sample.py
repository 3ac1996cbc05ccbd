"""The train-and-sample flow under a real (temporary) Prefect server: the tiny preset end to end,
artifacts read back through the API, a resumed run that redoes nothing, a rejected parameter."""

import json
import pathlib

import pytest
from prefect.client.orchestration import get_client
from prefect.testing.utilities import prefect_test_harness

from flows.train_and_sample import train_and_sample


@pytest.fixture(scope="module")
def prefect_server():
    with prefect_test_harness(server_startup_timeout=120):
        yield


def _mtimes(directory: pathlib.Path) -> dict:
    return {p.name: p.stat().st_mtime_ns for p in directory.glob("*.parquet")}


def test_tiny_preset_end_to_end_then_resume(prefect_server, tmp_path):
    state = train_and_sample(
        preset="tiny", output_root=str(tmp_path), run_name="r1", return_state=True
    )
    assert state.is_completed(), state.message
    result = state.result()
    run = tmp_path / "r1"
    assert result["run_dir"] == str(run) and result["best_step"] in (30, 60)
    for path in (
        "data/train/manifest.json",
        "data/test/manifest.json",
        "checkpoints/ckpt-60.json",
        "eval/metrics.json",
        "samples/manifest.json",
        "render/grid.png",
        "render/sampling.gif",
        "render/loss.png",
    ):
        assert (run / path).is_file(), path
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert [row["step"] for row in metrics["rows"]] == [30, 60]
    assert json.loads((run / "samples" / "manifest.json").read_text())["num_examples"] == 600

    import asyncio

    async def artifacts():
        async with get_client() as client:
            return {a.key: a for a in await client.read_artifacts() if a.key}

    found = asyncio.run(artifacts())
    assert {"checkpoint-metrics", "sample-report"} <= set(found)
    assert "data:image/png;base64," in found["sample-report"].data

    shards_before = _mtimes(run / "data" / "train")
    again = train_and_sample(
        preset="tiny", output_root=str(tmp_path), run_name="r1", return_state=True
    )
    assert again.is_completed(), again.message
    assert _mtimes(run / "data" / "train") == shards_before  # finished work is not redone
    assert sorted(p.name for p in (run / "checkpoints").glob("*.json")) == [
        "ckpt-30.json",
        "ckpt-60.json",
    ]


def test_bad_parameter_is_rejected_before_any_work(prefect_server, tmp_path):
    with pytest.raises(Exception, match="steps"):
        train_and_sample(preset="tiny", output_root=str(tmp_path), steps=0)
    with pytest.raises(Exception, match="preset"):
        train_and_sample(preset="imagenet", output_root=str(tmp_path))
    assert not any(tmp_path.iterdir())
