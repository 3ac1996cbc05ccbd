"""The `evaluate` flow: score every checkpoint of a run not scored yet, against the preset's
test set, each metric beside its real-versus-real floor."""

from __future__ import annotations

import dataclasses

from prefect import flow

from diffusion_lib.run import METRICS_NAME, Run
from diffusion_lib.run_lock import writing
from diffusion_lib.samplers import SamplerSpec
from flows.api_watch import watching_stage
from flows.params import Model, Preset, RunName, Sampler, described
from flows.task_runner import ClusterTaskRunner
from tasks.evaluate import score_checkpoints
from tasks.presets import resolve

PROG = "python -m flows.evaluate"


@flow(name="evaluate", log_prints=True, task_runner=ClusterTaskRunner())
@described
def evaluate_flow(
    preset: Preset,
    run_name: RunName,
    output_root: str = "runs",
    model: Model | None = None,
    sampler: Sampler | None = None,
) -> dict:
    """Returns {"best_step", "best_metric", "metrics_path"}. With `sampler` (one the model
    serves, at its default settings) the checkpoints are scored by it instead of the preset's,
    into eval/metrics-<sampler>.json beside the run's own eval/metrics.json."""
    given = dict(locals())  # this flow's parameters, before any other name is bound
    plan = resolve(preset, model, sampler=sampler)
    spec, report = plan.eval, METRICS_NAME
    if sampler is not None:
        spec = dataclasses.replace(spec, sampler=SamplerSpec.of(sampler))
        report = f"metrics-{sampler}.json"
    run = Run.at(output_root, run_name)
    with writing(run.path), watching_stage(evaluate_flow, PROG, given):
        return score_checkpoints(str(run.path), str(run.data_dir("test")), spec, report)


if __name__ == "__main__":
    from flows.cli import run_cli

    run_cli(evaluate_flow, prog=PROG)
