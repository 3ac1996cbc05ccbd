"""The run summary's versions say what they cover, and an image too large for the UI is named
by its path instead of embedded."""

import pathlib

import pytest
from prefect.settings import PREFECT_SERVER_EVENTS_MAXIMUM_SIZE_BYTES, temporary_settings

from flows.summary import RunSummary, StageRecord
from tasks import render

pytestmark = pytest.mark.cost(1)


def test_each_version_says_what_it_covers(tmp_path):
    summary = RunSummary(tmp_path, total_stages=4)
    assert summary.covers() == "starting: 0 of 4 stages done"
    summary.stages.append(StageRecord("prepare-dataset", state="Completed"))
    assert summary.covers() == "after prepare-dataset: 1 of 4 stages done"
    assert summary.markdown().startswith("# train-and-sample: after prepare-dataset: 1 of 4")
    assert "Best checkpoint" not in summary.markdown()  # no metrics yet
    summary.stages.append(StageRecord("train", state="Failed"))
    assert summary.covers() == "train failed: 1 of 4 stages done"
    summary.stages[-1] = StageRecord("train", state="Completed")
    summary.stages += [StageRecord(n, state="Completed") for n in ("evaluate", "sample")]
    assert summary.covers() == "all stages done"


def test_images_are_embedded_while_the_artifact_fits_one_prefect_event(tmp_path):
    grid, gif = tmp_path / "grid.png", tmp_path / "sampling.gif"
    grid.write_bytes(b"\x89PNG" + bytes(30_000))
    # A 1.4 MB GIF (the main job's EDM chain drawn at scale 3) is 1.9 MB as base64: over the
    # server's 1.5 MB event limit, the artifact's event would be dropped with a warning.
    gif.write_bytes(b"GIF89a" + bytes(1_440_000))
    assert render.embed_budget() == 1_500_000 - 65_536
    lines = render.shown_images([("samples", grid), ("sampling", gif)])
    assert lines[0].startswith("![samples](data:image/png;base64,iVBORw")
    assert lines[2] == f"- sampling: `{gif}` (1.4 MB, too large to show here)"
    assert sum(len(line) for line in lines) < render.embed_budget()
    assert pathlib.Path(gif).is_file()
    # The budget is the server's: raised, both are shown; each image is weighed in order.
    with temporary_settings({PREFECT_SERVER_EVENTS_MAXIMUM_SIZE_BYTES: 3_000_000}):
        shown = render.shown_images([("samples", grid), ("sampling", gif)])
    assert [line[:12] for line in shown] == ["![samples](d", "", "![sampling](", ""]
    with temporary_settings({PREFECT_SERVER_EVENTS_MAXIMUM_SIZE_BYTES: 2_000_000}):
        shown = render.shown_images([("sampling", gif), ("samples", grid)])
    assert shown[0].startswith("![sampling](") and shown[2].startswith("- samples: ")
