"""Completion sets (diffusion_lib.completions): the chunks a set is drawn in, a set written in
the chunks of an earlier default resumed in its own, and the first chunk drawn once for both
the set and its pictures."""

import pytest

from diffusion_lib import completions
from diffusion_lib.completions import (
    CHUNK_EXAMPLES,
    EARLIER_CHUNK_EXAMPLES,
    completion_set_in,
    completion_set_spec,
    render_completions,
)
from diffusion_lib.data import open_dataset, prepare_dataset
from diffusion_lib.draw import clear_memo
from diffusion_lib.samplers import SamplerSpec

OPTIONS = {
    "masks": ["coordinate-known:0"],
    "images": 30,
    "completions": 2,
    "sampler": SamplerSpec.of("ddim", num_steps=10),
    "rows_per_shard": 40,
}


def _earlier_rows() -> int:
    return min(OPTIONS["images"], EARLIER_CHUNK_EXAMPLES[0]) * OPTIONS["completions"]


def test_a_new_set_is_drawn_in_chunks_of_the_default_or_the_callers(toy_ddpm_run, tmp_path):
    spec = completion_set_in(tmp_path / "none", toy_ddpm_run, **OPTIONS)
    rows = min(OPTIONS["images"], CHUNK_EXAMPLES) * OPTIONS["completions"]
    assert dict(spec.options)["chunk_rows"] == rows != _earlier_rows()
    assert spec == completion_set_spec(toy_ddpm_run, **OPTIONS)
    own = completion_set_in(tmp_path / "none", toy_ddpm_run, **OPTIONS, chunk_rows=6)
    assert dict(own.options)["chunk_rows"] == 6


def test_a_set_in_an_earlier_defaults_chunks_is_kept_in_them_finished_or_half_written(
    toy_ddpm_run, tmp_path
):
    out = tmp_path / "completions"
    earlier = completion_set_spec(toy_ddpm_run, **OPTIONS, chunk_rows=_earlier_rows())
    prepare_dataset(earlier, out)
    shards = sorted(out.glob("shard-*.parquet"))
    assert len(shards) == 2
    assert completion_set_in(out, toy_ddpm_run, **OPTIONS) == earlier

    # Half-written: one shard and no manifest. The shard names the set it belongs to.
    (out / "manifest.json").unlink()
    shards[1].unlink()
    assert completion_set_in(out, toy_ddpm_run, **OPTIONS) == earlier
    # The caller's own chunks, or another set (other masks), are planned afresh.
    assert completion_set_in(out, toy_ddpm_run, **OPTIONS, chunk_rows=6) != earlier
    other = completion_set_in(out, toy_ddpm_run, **{**OPTIONS, "masks": ["coordinate-known:1"]})
    assert dict(other.options)["chunk_rows"] != _earlier_rows()


def test_the_pictures_reuse_the_first_chunk_the_set_drew_in_this_process(
    toy_ddpm_run, tmp_path, monkeypatch
):
    calls = []

    def counted(*args, **kwargs):
        calls.append(kwargs.get("frames"))
        return draw(*args, **kwargs)

    draw = completions.draw
    monkeypatch.setattr(completions, "draw", counted)
    clear_memo()  # another test in this process may have drawn the same set's first chunk
    spec = completion_set_spec(toy_ddpm_run, **OPTIONS)
    prepare_dataset(spec, tmp_path / "set")
    chunks = -(-len(open_dataset(tmp_path / "set")) // dict(spec.options)["chunk_rows"])
    assert len(calls) == chunks and calls[0] is not None  # chunk 0 with its chain
    first = render_completions(toy_ddpm_run, tmp_path / "set", tmp_path / "render")
    assert len(calls) == chunks  # not drawn again
    source = completions.DiffusionCompletions("completions", **dict(spec.options))
    remembered = source.draw_rows(0)[0].samples
    with pytest.raises(ValueError, match="read-only"):  # shared: nobody may change it
        remembered[0] = 0

    # In another process (nothing remembered) the chunk is drawn again, the same bit for bit:
    # render_completions checks it against the set, and draws the same pictures.
    clear_memo()
    again = render_completions(toy_ddpm_run, tmp_path / "set", tmp_path / "again")
    assert len(calls) == chunks + 1
    for name in ("grid", "gif"):
        assert first[name].read_bytes() == again[name].read_bytes()
