"""The `train-and-sample` flow: prepare data, train, evaluate every checkpoint, sample from the
best one, render. Composes tasks only.

    python -m flows.train_and_sample --preset tiny --output-root runs

Run directory: <output_root>/<run_name>/{data/, checkpoints/, eval/, samples/, render/}. The
default run name is "<preset>-<flow run name>", so concurrent runs never share a directory; pass
the same `run_name` again to resume a failed run (every stage skips what is done).
"""

from __future__ import annotations

import argparse
import json
from typing import Annotated, Literal

from prefect import flow, runtime
from prefect.artifacts import create_markdown_artifact
from prefect.utilities.annotations import unmapped
from pydantic import Field

from tasks.data import finalize_shards, plan_shards, prepare_shards
from tasks.evaluate import evaluate_checkpoints
from tasks.presets import PRESETS, resolve
from tasks.render import render_outputs
from tasks.sample import finalize_samples, generate_samples, plan_samples
from tasks.train import train_model, training_config

Preset = Literal["tiny", "swiss-roll", "mnist-cpu"]
Positive = Annotated[int, Field(gt=0)]


def _prepare(spec: dict, directory: str) -> str:
    count = plan_shards(spec)
    files = prepare_shards.map(unmapped(spec), unmapped(directory), range(count))
    return finalize_shards(spec, directory, files)


def report_failure(flow_obj, flow_run, state) -> None:
    """On failure: a short artifact naming the failed stage and how to resume."""
    parameters = flow_run.parameters or {}
    run_name = parameters.get("run_name") or f"{parameters.get('preset', 'tiny')}-{flow_run.name}"
    create_markdown_artifact(
        key="failure-report",
        markdown=(
            f"# train-and-sample failed\n\n{state.message}\n\nEvery stage resumes where it stopped. Re-run with\n\n"
            f"    prefect deployment run train-and-sample/default --param run_name={run_name}\n\n"
            f"(or `python -m flows.train_and_sample --run-name {run_name}`)."
        ),
    )


@flow(name="train-and-sample", on_failure=[report_failure], log_prints=True)
def train_and_sample(
    preset: Preset = "tiny",
    output_root: str = "runs",
    run_name: str | None = None,
    steps: Positive | None = None,
    batch_size: Positive | None = None,
    num_samples: Positive | None = None,
    sampler: Literal["ddpm", "ddim", "annealed_langevin"] | None = None,
    timeout_minutes: Annotated[float, Field(gt=0)] = 120.0,
) -> dict:
    plan = resolve(
        preset, steps=steps, batch_size=batch_size, num_samples=num_samples, sampler=sampler
    )
    run_dir = f"{output_root}/{run_name or f'{preset}-{runtime.flow_run.name}'}"
    train_dir = _prepare(plan["train_data"], f"{run_dir}/data/train")
    test_dir = _prepare(plan["test_data"], f"{run_dir}/data/test")
    config = training_config(plan["train"], train_dir)
    trained = train_model(config, run_dir, timeout_seconds=timeout_minutes * 60)
    evaluation = evaluate_checkpoints(run_dir, test_dir, plan["eval"], wait_for=[trained])
    best = evaluation["best_step"]
    count = plan_samples(run_dir, plan["samples"], best)
    samples_dir = f"{run_dir}/samples"
    files = generate_samples.map(
        unmapped(run_dir),
        unmapped(plan["samples"]),
        unmapped(best),
        unmapped(samples_dir),
        range(count),
    )
    finalize_samples(run_dir, plan["samples"], best, samples_dir, files)
    outputs = render_outputs(run_dir, samples_dir, f"{run_dir}/render", best)
    result = {
        "run_dir": run_dir,
        "best_step": best,
        "metrics": evaluation["metrics_path"],
        "samples": samples_dir,
        **outputs,
    }
    print(json.dumps(result, indent=2))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="mnist-cpu", choices=sorted(PRESETS))
    parser.add_argument("--output-root", default="runs")
    parser.add_argument("--run-name", default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--num-samples", type=int, default=None)
    args = parser.parse_args()
    train_and_sample(
        preset=args.preset,
        output_root=args.output_root,
        run_name=args.run_name,
        steps=args.steps,
        num_samples=args.num_samples,
    )


if __name__ == "__main__":
    main()
