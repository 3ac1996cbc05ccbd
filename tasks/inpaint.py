"""Completion-set tasks: plan (the set's spec, every input checked first), one task per shard
(mapped), finalize, score against the baselines, render; the report artifact shows the grid
and the metrics table."""

from __future__ import annotations

import json
import pathlib

from prefect import task
from prefect.artifacts import create_markdown_artifact

from diffusion_lib._atomic import atomic_write_bytes
from diffusion_lib.completions import chunk_rows_for, completion_set_in, render_completions
from diffusion_lib.data import DatasetSpec, open_dataset, plan_dataset
from diffusion_lib.evaluation.inpainting import METHODS, completion_metrics
from diffusion_lib.sample_sets import make_room
from diffusion_lib.samplers import SamplerSpec
from tasks.data import finalize_shards, prepare_shards
from tasks.progress import run_logger, show_progress
from tasks.render import shown_images
from tasks.retries import worth_retrying


@task(retries=2, retry_delay_seconds=5, retry_condition_fn=worth_retrying)
def plan_completions(
    run_dir: str,
    out_dir: str,
    *,
    sampler: SamplerSpec,
    step: int | None,
    chunk_examples: int | None = None,
    **options,
) -> tuple[DatasetSpec, int]:
    """The completion set's spec and its shard count, drawn `chunk_examples` examples at a time
    (None: the default, `completions.CHUNK_EXAMPLES`). Another set in `out_dir` (other masks,
    sampler, checkpoint or chunks) is moved beside it; the same set half-written, or drawn in
    the chunks of an earlier default, stays and resumes."""
    if chunk_examples is not None:
        options["chunk_rows"] = chunk_rows_for(
            options["images"], options["completions"], chunk_examples
        )
    spec = completion_set_in(out_dir, run_dir, sampler=sampler, step=step, **options)
    moved = make_room(spec, out_dir)
    if moved is not None:
        run_logger("tasks.inpaint").info("an earlier completion set was moved to %s", moved)
    return spec, plan_dataset(spec).num_shards


completion_shards = prepare_shards.with_options(name="completion_shards")
finalize_completions = finalize_shards.with_options(name="finalize_completions")


@task(retries=1, retry_delay_seconds=5, retry_condition_fn=worth_retrying)
def score_completions(run_dir: str, completions_dir: str, metrics_path: str) -> dict:
    """The completions' metrics beside the baselines' (`evaluation.inpainting`), written to
    `metrics_path`; a report of this very set already there is read, not computed again."""
    fingerprint = open_dataset(completions_dir).manifest.fingerprint
    path = pathlib.Path(metrics_path)
    if path.is_file():
        report = json.loads(path.read_text())
        if report.get("fingerprint") == fingerprint:
            return report
    show_progress("inpaint", 0, 1, "scoring completions and baselines")
    report = {"fingerprint": fingerprint, **completion_metrics(completions_dir, run_dir)}
    atomic_write_bytes(path, json.dumps(report, indent=2, sort_keys=True).encode())
    show_progress("inpaint", 1, 1, "scoring completions and baselines")
    return report


def metrics_table(report: dict) -> list[str]:
    """Markdown lines: per mask, a row per method (the completions and the two baselines)."""
    columns = [
        ("accuracy", "accuracy", "{:.1%}"),
        ("hidden_mse", "hidden MSE", "{:.4f}"),
        ("hidden_psnr", "hidden PSNR dB", "{:.2f}"),
        ("fid", "FID", "{:.2f}"),
        ("precision", "precision", "{:.3f}"),
        ("diversity", "diversity", "{:.3f}"),
    ]
    lines = []
    for mask, methods in report["masks"].items():
        shown = [c for c in columns if c[0] in methods["completions"]]
        lines += [f"### `{mask}`", ""]
        lines += ["| method | " + " | ".join(title for _, title, _ in shown) + " |"]
        lines += ["| --- " * (len(shown) + 1) + "|"]
        for method in METHODS:
            entry = methods[method]
            cells = []
            for key, _, form in shown:
                cell = form.format(entry[key])
                floor = entry.get(f"{key}_floor")
                cells.append(cell + (f" (floor {form.format(floor)})" if floor is not None else ""))
            lines += [f"| {method} | " + " | ".join(cells) + " |"]
        lines += [""]
    return lines


@task(retries=1, retry_delay_seconds=5, retry_condition_fn=worth_retrying)
def render_completion_report(
    run_dir: str, completions_dir: str, out_dir: str, report: dict
) -> dict[str, str]:
    """The grid and the filling GIF, and the `inpaint-report` artifact showing them with the
    metrics table."""
    show_progress("render", 0, 1, "rendering completions")
    rendered = render_completions(run_dir, completions_dir, out_dir)
    show_progress("render", 1, 1, "rendering completions")
    lines = [f"# Completions of held-out examples, `{run_dir}`", ""]
    lines += shown_images([("original, given, completions", rendered["grid"])])
    lines += metrics_table(report)
    lines += [f"- the chain filling the hole: `{rendered['gif']}`", f"- set: `{completions_dir}`"]
    create_markdown_artifact(
        markdown="\n".join(lines),
        key="inpaint-report",
        description="completions beside the mean-fill and nearest-neighbour baselines",
    )
    return {name: str(path) for name, path in rendered.items()}
