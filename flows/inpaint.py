"""The `inpaint` flow: on a finished run, held-out examples with part hidden by each mask,
filled in `completions` times by the run's sampler (one task per shard), scored against the
mean-fill and nearest-neighbour baselines, rendered (original | given | completions, and the
chain filling the hole). Everything is written under <run>/inpaint/ and resumes like the
sample stage: finished shards are kept, a finished report is read back."""

from __future__ import annotations

from prefect import flow
from prefect.utilities.annotations import unmapped

from diffusion_lib.run import Run
from diffusion_lib.run_lock import writing
from flows.api_watch import watching_stage
from flows.params import Masks, Model, Positive, Preset, RunName, Sampler, Weight, described
from tasks.inpaint import (
    completion_shards,
    finalize_completions,
    plan_completions,
    render_completion_report,
    score_completions,
)
from tasks.presets import resolve
from tasks.progress import follow_shards

PROG = "python -m flows.inpaint"


@flow(name="inpaint", log_prints=True)
@described
def inpaint_flow(
    preset: Preset,
    run_name: RunName,
    output_root: str = "runs",
    model: Model | None = None,
    step: Positive | None = None,
    masks: Masks | None = None,
    images: Positive = 100,
    completions: Positive = 4,
    sampler: Sampler | None = None,
    resamplings: Positive | None = None,
    jump_length: Positive | None = None,
    reconstruction: Weight | None = None,
    chunk_examples: Positive | None = None,
) -> dict:
    """Fills in held-out examples of a finished run under each mask, scores the completions
    against two baselines and renders them. Returns the set, the report and the pictures."""
    given = dict(locals())  # this flow's parameters, before any other name is bound
    plan = resolve(preset, model, sampler=sampler)
    method = plan.inpaint  # the preset's way of filling in, each part replaced if given
    # A sampler named here replaces the preset's; the run's unconditional model fills in:
    # guidance needs a class to guide towards.
    spec = plan.samples.sampler if sampler or method.sampler is None else method.sampler
    if spec.guidance:
        spec = spec.replace(guidance=0.0)
    resamplings = method.resamplings if resamplings is None else resamplings
    jump_length = method.jump_length if jump_length is None else jump_length
    reconstruction = method.reconstruction if reconstruction is None else reconstruction
    run = Run.at(output_root, run_name)
    if not run.config_path.is_file():
        raise ValueError(f"run_name: {run.path} holds no trained run; train it first")
    chosen = masks or ("top-known" if len(run.example_shape) == 3 else "coordinate-known:0")
    mask_list = [m.strip() for m in chosen.split(",") if m.strip()]
    out = run.path / "inpaint"
    with writing(run.path), watching_stage(inpaint_flow, PROG, given):
        directory = str(out / "completions")
        set_spec, count = plan_completions(
            str(run.path),
            directory,
            sampler=spec,
            step=step,
            masks=mask_list,
            images=images,
            completions=completions,
            resamplings=resamplings,
            jump_length=jump_length,
            reconstruction=reconstruction,
            chunk_examples=chunk_examples,
        )
        futures = completion_shards.map(unmapped(set_spec), unmapped(directory), range(count))
        files = follow_shards(
            futures, count, stage="inpaint", key="inpaint-progress", what="completion shards"
        )
        finalize_completions(set_spec, directory, files)
        report = score_completions(str(run.path), directory, str(out / "metrics.json"))
        rendered = render_completion_report(str(run.path), directory, str(out / "render"), report)
        return {"completions": directory, "metrics": str(out / "metrics.json"), **rendered}


if __name__ == "__main__":
    from flows.cli import run_cli

    run_cli(inpaint_flow, prog=PROG)
