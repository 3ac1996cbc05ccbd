"""The run summary's versions say what they cover, and an image too large for the UI is named
by its path instead of embedded."""

import pathlib

import pytest

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


def test_an_image_too_large_to_embed_is_named_by_its_path(tmp_path, monkeypatch):
    gif = tmp_path / "sampling.gif"
    gif.write_bytes(b"GIF89a" + bytes(2000))
    assert render.shown_image("sampling", gif).startswith("![sampling](data:image/gif;base64,R0lG")
    monkeypatch.setattr(render, "EMBED_LIMIT_BYTES", 1000)
    assert render.shown_image("sampling", gif) == (
        f"- sampling: `{gif}` (0.0 MB, too large to show here)"
    )
    assert pathlib.Path(gif).is_file()
