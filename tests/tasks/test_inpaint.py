"""The completion set's planning task: the chunks it is drawn in, and an earlier set in the
directory moved aside when the chunks asked for differ."""

from diffusion_lib.completions import CHUNK_EXAMPLES
from diffusion_lib.data import prepare_dataset
from diffusion_lib.samplers import SamplerSpec
from tasks.inpaint import plan_completions

OPTIONS = {
    "masks": ["coordinate-known:0"],
    "images": 30,
    "completions": 2,
    "sampler": SamplerSpec.of("ddim", num_steps=10),
    "step": None,
}


def test_a_set_is_drawn_in_the_chunks_asked_for_and_moves_the_default_ones_aside(
    toy_ddpm_run, tmp_path
):
    out = tmp_path / "completions"
    default, _ = plan_completions.fn(str(toy_ddpm_run), str(out), **OPTIONS)
    assert dict(default.options)["chunk_rows"] == min(30, CHUNK_EXAMPLES) * 2
    prepare_dataset(default, out)
    again, _ = plan_completions.fn(str(toy_ddpm_run), str(out), **OPTIONS, chunk_examples=None)
    assert again == default and (out / "manifest.json").is_file()  # kept to be read back

    smaller, shards = plan_completions.fn(str(toy_ddpm_run), str(out), **OPTIONS, chunk_examples=7)
    assert dict(smaller.options)["chunk_rows"] == 14 and smaller != default
    assert shards == 1
    assert not out.exists()  # another set: moved beside, kept whole
    (moved,) = tmp_path.glob("completions-*")
    assert (moved / "manifest.json").is_file()
