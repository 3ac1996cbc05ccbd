"""The `sample` flow: a large sample set from one checkpoint (one task per shard, in parallel
where the task runner allows), then the grid, GIF and report. A progress artifact counts the
finished shards."""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.futures import as_completed
from prefect.utilities.annotations import unmapped

from flows.params import Model, Positive, Preset, RunName, Sampler, run_directory
from tasks.presets import resolve
from tasks.render import render_outputs
from tasks.sample import finalize_samples, generate_samples, plan_samples


@flow(name="sample", log_prints=True)
def sample(
    preset: Preset,
    run_name: RunName,
    output_root: str = "runs",
    model: Model = "ddpm",
    step: Positive | None = None,
    num_samples: Positive | None = None,
    sampler: Sampler | None = None,
) -> dict:
    """Samples checkpoint `step` (default: the latest) into <run>/samples, renders <run>/render.
    Returns the sample directory and the rendered files."""
    plan = resolve(preset, model, num_samples=num_samples, sampler=sampler)
    run_dir = run_directory(output_root, run_name)
    settings, samples_dir = plan["samples"], f"{run_dir}/samples"
    count = plan_samples(run_dir, settings, step)
    progress = create_progress_artifact(
        0.0, key="sample-progress", description="sample shards done"
    )
    futures = generate_samples.map(
        unmapped(run_dir), unmapped(settings), unmapped(step), unmapped(samples_dir), range(count)
    )
    for done, _ in enumerate(as_completed(futures), start=1):
        update_progress_artifact(progress, 100.0 * done / count)
    finalize_samples(run_dir, settings, step, samples_dir, futures.result())
    rendered = render_outputs(run_dir, samples_dir, f"{run_dir}/render", step, settings)
    return {"samples": samples_dir, **rendered}
