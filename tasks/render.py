"""`render_outputs`: the GIF, the grid, the loss curve, and a report artifact that shows them.

Images appear in the Prefect UI as small PNGs embedded in a markdown artifact (data URIs): an
image artifact needs a URL, and nothing here serves files.
"""

from __future__ import annotations

import base64
import pathlib

from prefect import task
from prefect.artifacts import create_markdown_artifact

from diffusion_lib.reports import render_run
from diffusion_lib.run import Run
from diffusion_lib.samplers import SamplerSpec
from tasks.progress import show_progress
from tasks.retries import worth_retrying


def embed_budget() -> int:
    """How many bytes of embedded images one markdown artifact holds: Prefect's server drops,
    with a warning, the event of an artifact whose JSON exceeds its maximum event size
    (PREFECT_SERVER_EVENTS_MAXIMUM_SIZE_BYTES, 1.5 MB by default); 64 kB of it is left for
    the artifact's text."""
    from prefect.settings import get_current_settings

    return get_current_settings().server.events.maximum_size_bytes - (64 << 10)


def embedded_png(path: pathlib.Path) -> str:
    """A PNG (or GIF) file as a data URI, for markdown artifacts (which cannot reach files)."""
    kind = "gif" if path.suffix.lower() == ".gif" else "png"
    return f"data:image/{kind};base64," + base64.b64encode(path.read_bytes()).decode()


def shown_images(images: list[tuple[str, pathlib.Path]]) -> list[str]:
    """Markdown lines that show each (title, path) in the UI, in order, while their data URIs
    fit one artifact's `embed_budget`; an image that does not fit is named by its path."""
    lines, left = [], embed_budget()
    for title, path in images:
        uri = embedded_png(path)
        if len(uri) <= left:
            lines += [f"![{title}]({uri})", ""]
            left -= len(uri)
        else:
            size = path.stat().st_size / 2**20
            lines += [f"- {title}: `{path}` ({size:.1f} MB, too large to show here)", ""]
    return lines


@task(retries=1, retry_delay_seconds=5, retry_condition_fn=worth_retrying)
def render_outputs(
    run_dir: str,
    samples_dir: str,
    out_dir: str,
    sampler: SamplerSpec,
    step: int | None = None,
) -> dict:
    """Renders the run (see `diffusion_lib.reports.render_run`) and publishes the report;
    `sampler` is the sample set's: the GIF's chain is drawn the same way."""
    show_progress("render", 0, 1, "rendering grid, GIF, plots")
    renders = render_run(run_dir, samples_dir, out_dir, step, sampler=sampler)
    show_progress("render", 1, 1, "rendering grid, GIF, plots")
    lines = [f"# Samples from `{run_dir}` (step {renders.step})", ""]
    images = [
        ("samples", renders.grid),
        ("loss", renders.loss_curve),
        ("score field", renders.score_field),
    ]
    lines += shown_images([(title, path) for title, path in images if path is not None])
    lines += [
        f"- sampling GIF: `{renders.gif}`",
        f"- sample shards: `{samples_dir}`",
        f"- TensorBoard: `tensorboard --logdir {Run(run_dir).tensorboard_dir}`",
    ]
    create_markdown_artifact(
        markdown="\n".join(lines), key="sample-report", description="samples and training curve"
    )
    return renders.paths()
