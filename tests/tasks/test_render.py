"""`render_outputs` as a task: it renders the run and publishes the sample report with its
images embedded as data URIs (an image artifact would need a URL, and nothing serves files)."""

import pathlib

from prefect import flow

from diffusion_lib.sample_sets import generate_samples
from diffusion_lib.samplers import SamplerSpec
from tasks.render import render_outputs
from tests.prefect_reads import artifacts_of

SAMPLER = SamplerSpec.of("ddim", num_steps=10)


@flow
def render(run_dir: str, samples_dir: str, out_dir: str) -> dict:
    return render_outputs(run_dir, samples_dir, out_dir, SAMPLER)


def test_the_report_embeds_the_rendered_pngs(prefect_server, toy_ddpm_run, tmp_path):
    generate_samples(toy_ddpm_run, tmp_path / "samples", n=64, sampler=SAMPLER)
    state = render(
        str(toy_ddpm_run), str(tmp_path / "samples"), str(tmp_path / "render"), return_state=True
    )
    paths = state.result()
    assert paths and all(pathlib.Path(p).is_file() for p in paths.values() if p)

    (report,) = [
        a for a in artifacts_of(state.state_details.flow_run_id) if a.key == "sample-report"
    ]
    # The samples and the loss curve; a score field is drawn for score models only.
    assert report.data.count("data:image/png;base64,") == 2 and "score_field.png" not in paths
    assert str(tmp_path / "samples") in report.data
