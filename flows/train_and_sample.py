"""The `train-and-sample` flow: prepare-dataset -> train -> evaluate -> sample, each a subflow
of its own (so each shows as one stage in the UI and can be run alone), on one run directory.

    python -m flows.train_and_sample --preset mnist-cpu --output-root runs

Run directory: <output_root>/<run_name>/{data/, checkpoints/, eval/, samples/, render/}. The
default run name is "<preset>-<flow run name>", so concurrent runs never share a directory; pass
the same `run_name` again to resume a failed run (every stage skips what is done).
"""

from __future__ import annotations

import inspect
import json
import shlex
import time
from collections.abc import Callable

from prefect import flow, get_run_logger, runtime
from prefect.artifacts import create_markdown_artifact

from diffusion_lib.run import Run
from diffusion_lib.run_lock import writing
from flows.api_watch import lost_line, watching_api
from flows.cli import command_line, not_defaults, run_cli
from flows.evaluate import evaluate_flow
from flows.params import (
    Guidance,
    Minutes,
    Model,
    Positive,
    Preset,
    RunName,
    Sampler,
    Sigma,
    default_run_name,
    described,
)
from flows.prepare_dataset import prepare_dataset_flow
from flows.sample import sample_flow
from flows.summary import RunSummary, StageRecord
from flows.train import train_flow
from tasks.presets import resolve

PROG = "python -m flows.train_and_sample"
# The stages, in order: each a subflow of its own.
STAGES = ("prepare-dataset", "train", "evaluate", "sample")


class StageFailed(RuntimeError):
    """A stage (subflow) failed; the message names it and keeps the cause's message, and
    `run_name` the run a re-run resumes."""

    def __init__(self, message: str, run_name: str | None = None):
        super().__init__(message)
        self.run_name = run_name


def _taken(fn, values: dict) -> dict:
    """The entries of `values` that `fn` (a flow or a function) has a parameter of that name for:
    a stage gets this flow's parameters that it declares, with the same meaning."""
    names = inspect.signature(getattr(fn, "fn", fn)).parameters
    return {name: value for name, value in values.items() if name in names}


def _stage(summary: RunSummary, name: str, subflow, **parameters):
    """Runs one stage subflow, logging its start and end at the parent and keeping the
    `run-summary` artifact current."""
    logger = get_run_logger()
    record = StageRecord(name)
    summary.stages.append(record)
    logger.info(f"stage {name!r} started")
    started = time.monotonic()
    state = subflow(**parameters, return_state=True)
    record.seconds = time.monotonic() - started
    record.flow_run_id = str(state.state_details.flow_run_id)
    record.state = state.name
    if not state.is_completed():
        summary.publish()
        raise StageFailed(f"stage {name!r} failed: {state.message}", parameters.get("run_name"))
    logger.info(f"stage {name!r} finished in {record.seconds:.1f} s")
    result = state.result()
    summary.learn(result)
    summary.link_reports(record.flow_run_id)
    summary.publish()
    return result


def resume_hint(parameters: dict) -> str:
    """How to resume the run of these flow `parameters` (its `run_name` filled in): from a
    deployment, or the command line, with the parameters that say something
    (`flows.cli.not_defaults`)."""
    shown = not_defaults(train_and_sample, parameters)
    deployment = ["prefect", "deployment", "run", "train-and-sample/default"]
    for name, value in shown.items():
        deployment += [
            "--param",
            f"{name}={json.dumps(value) if not isinstance(value, str) else value}",
        ]
    return f"{shlex.join(deployment)} (or {command_line(PROG, shown)})"


def report_failure(flow_obj, flow_run, state) -> None:
    """On failure: a short artifact naming the failed stage and how to resume."""
    parameters = dict(flow_run.parameters or {})
    parameters["run_name"] = parameters.get("run_name") or default_run_name(
        parameters.get("preset", "tiny"), flow_run.name
    )
    command, _, alternative = resume_hint(parameters).partition(" (or ")
    create_markdown_artifact(
        key="failure-report",
        markdown=(
            f"# train-and-sample failed\n\n{state.message}\n\nEvery stage resumes where it "
            f"stopped. Re-run with\n\n    {command}\n\n(or `{alternative[:-1]}`)."
        ),
    )


def _api_lost(parameters: dict) -> Callable[[str, float], str]:
    return lambda url, quiet: lost_line(
        "train-and-sample", url, quiet, parameters["run_name"], resume_hint(parameters)
    )


@flow(name="train-and-sample", on_failure=[report_failure], log_prints=True)
@described
def train_and_sample(
    preset: Preset = "tiny",
    output_root: str = "runs",
    run_name: RunName | None = None,
    model: Model | None = None,
    steps: Positive | None = None,
    batch_size: Positive | None = None,
    num_samples: Positive | None = None,
    sampler: Sampler | None = None,
    guidance: Guidance | None = None,
    guidance_sigma_min: Sigma | None = None,
    guidance_sigma_max: Sigma | None = None,
    workers: Positive = 1,
    timeout_minutes: Minutes = 120.0,
    warm_start: bool = False,
) -> dict:
    """Prepares the preset's data, trains, scores the checkpoints and samples the best one, each
    stage a subflow on one run directory. Returns the run directory, the final and best steps,
    the metrics file and the sample set's files."""
    given = dict(locals())  # this flow's parameters, before any other name is bound
    # Every override is checked here, before any stage starts (a bad value costs nothing).
    resolve(**_taken(resolve, given))
    given["run_name"] = run_name = run_name or default_run_name(preset, runtime.flow_run.name)
    where = {"preset": preset, "output_root": output_root, "run_name": run_name, "model": model}
    # One writer per run directory: a second run of the same name stops here, naming the
    # first (the stages and the training worker share this lock).
    with writing(Run.at(output_root, run_name).path), watching_api(_api_lost(given)):
        summary = RunSummary(Run.at(output_root, run_name).path, total_stages=len(STAGES))
        _stage(summary, "prepare-dataset", prepare_dataset_flow, **where)
        trained = _stage(summary, "train", train_flow, **_taken(train_flow, given))
        # Scored by the preset's sampler: this flow's `sampler` is the sample set's.
        evaluation = _stage(summary, "evaluate", evaluate_flow, **where)
        best = evaluation["best_step"]
        sampled = _stage(summary, "sample", sample_flow, **_taken(sample_flow, given), step=best)
        result = {
            "run_dir": str(summary.run_dir),
            "final_step": trained["step"],
            "best_step": best,
            "metrics": evaluation["metrics_path"],
            **sampled,
        }
    for line in summary.closing_lines():
        get_run_logger().info(line)
    return result


def main(argv: list[str] | None = None) -> None:
    """The flow's command line (flows/cli.py): a flag a parameter, the preset defaulting to the
    main job's instead of the deployment's `tiny`."""
    run_cli(train_and_sample, argv, defaults={"preset": "mnist-cpu"}, prog=PROG)


if __name__ == "__main__":
    main()
