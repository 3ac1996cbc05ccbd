"""The `sample` flow: a large sample set from one checkpoint (one task per shard, in parallel
where the task runner allows), then the grid, GIF and report. A progress artifact counts the
finished shards."""

from __future__ import annotations

from prefect import flow
from prefect.utilities.annotations import unmapped

from diffusion_lib.run import Run
from diffusion_lib.run_lock import writing
from flows.api_watch import watching_stage
from flows.params import Guidance, Model, Positive, Preset, RunName, Sampler, Sigma, described
from flows.task_runner import ClusterTaskRunner
from tasks.presets import resolve
from tasks.progress import follow_shards
from tasks.render import render_outputs
from tasks.sample import finalize_samples, plan_samples, sample_shards

PROG = "python -m flows.sample"


@flow(name="sample", log_prints=True, task_runner=ClusterTaskRunner())
@described
def sample_flow(
    preset: Preset,
    run_name: RunName,
    output_root: str = "runs",
    model: Model | None = None,
    step: Positive | None = None,
    num_samples: Positive | None = None,
    sampler: Sampler | None = None,
    guidance: Guidance | None = None,
    guidance_sigma_min: Sigma | None = None,
    guidance_sigma_max: Sigma | None = None,
) -> dict:
    """Samples checkpoint `step` (default: the latest) into <run>/samples, renders <run>/render.
    Returns the sample directory and the rendered files."""
    given = dict(locals())  # this flow's parameters, before any other name is bound
    plan = resolve(
        preset,
        model,
        num_samples=num_samples,
        sampler=sampler,
        guidance=guidance,
        guidance_sigma_min=guidance_sigma_min,
        guidance_sigma_max=guidance_sigma_max,
    )
    run = Run.at(output_root, run_name)
    with writing(run.path), watching_stage(sample_flow, PROG, given):
        run_dir, part, samples_dir = str(run.path), plan.samples, str(run.samples_dir)
        spec, count = plan_samples(run_dir, part, step, samples_dir)
        futures = sample_shards.map(unmapped(spec), unmapped(samples_dir), range(count))
        files = follow_shards(
            futures, count, stage="sample", key="sample-progress", what="sample shards"
        )
        finalize_samples(spec, samples_dir, files)
        rendered = render_outputs(run_dir, samples_dir, str(run.render_dir), part.sampler, step)
        return {"samples": samples_dir, **rendered}


if __name__ == "__main__":
    from flows.cli import run_cli

    run_cli(sample_flow, prog=PROG)
