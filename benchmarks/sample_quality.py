"""Sample quality per CPU minute: named configurations through the real pipeline, one row each.

    python benchmarks/sample_quality.py default ncsn-default tiny-default
    python benchmarks/sample_quality.py --list
    python benchmarks/sample_quality.py ddpm-before --output-root /tmp/quality

Each configuration is a preset and model of the `train-and-sample` flow plus changes to the
preset's train / eval / samples settings, applied in the child process before the flow resolves
its preset (the flow itself, its temporary Prefect server, the training worker, evaluation and
rendering are the ones `python -m flows.train_and_sample` runs). Every configuration runs in a
fresh child process, alone, and its wall time is the whole job's, start-up included. A row:

    preset  model  changed  wall min  metric / floor  classifier score  classes  smallest share

for the best checkpoint (by FID for images, sliced Wasserstein for points). `default` rows run
the presets exactly as the README does; `*-before` rows restore the settings of the earlier
defaults, so before and after are measured on the same machine in the same session.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import pathlib
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = pathlib.Path(__file__).resolve().parents[1]

# name: (preset, model, what changed, {part: overrides of the preset's (or score variant's)
# settings}). A training override of None goes back to the training preset's value. The
# annealed Langevin bug cannot be configured back; sampler_settings.py reproduces it on a
# checkpoint (half the step_lr in today's form is exactly the old update).
CONFIGS: dict[str, tuple[str, str, str, dict]] = {
    "default": ("mnist-cpu", "ddpm", "the preset as it is", {}),
    "ddpm-before": (
        "mnist-cpu",
        "ddpm",
        "earlier defaults: lr 1e-3, 2,000 steps, every checkpoint scored, DDIM eta 0 (20 / 50 steps)",
        {
            "train": {"learning_rate": 1e-3, "num_steps": 2_000, "checkpoint_every": 500},
            "eval": {"num_steps": 20, "eta": 0.0, "newest": 0},
            "samples": {"num_steps": 50, "eta": 0.0},
        },
    ),
    "ncsn-default": ("mnist-cpu", "ncsn", "the preset as it is", {}),
    "sde-vp-default": ("mnist-cpu", "sde-vp", "the preset as it is", {}),
    "sde-ve-default": ("mnist-cpu", "sde-ve", "the preset as it is", {}),
    "tiny-default": ("tiny", "ddpm", "the preset as it is", {}),
    "tiny-before": (
        "tiny",
        "ddpm",
        "earlier tiny: 60 steps of mlp-tiny",
        {"train": {"network": "mlp-tiny", "num_steps": 60, "checkpoint_every": 30}},
    ),
}


def _apply(changes: dict) -> None:
    """Makes every resolve() in this process apply `changes` ({part: {key: value}}, see
    Pipeline.with_settings) to the plan; call it before the flows are imported."""
    from tasks import presets

    original = presets.resolve

    def resolve(*args, **kwargs):
        plan = original(*args, **kwargs)
        for part, overrides in changes.items():
            plan = plan.with_settings(part, **overrides)
        return plan

    presets.resolve = resolve


def _child(name: str, run_name: str, output_root: str, extra: dict) -> None:
    preset, model, _, changes = CONFIGS[name]
    merged = copy.deepcopy(changes)
    for part, overrides in extra.items():
        merged.setdefault(part, {}).update(overrides)
    _apply(merged)
    from flows.train_and_sample import train_and_sample

    train_and_sample(preset=preset, model=model, output_root=output_root, run_name=run_name)


def _row(name: str, run_dir: pathlib.Path, minutes: float, note: str) -> dict:
    preset, model, changed, _ = CONFIGS[name]
    report = json.loads((run_dir / "eval" / "metrics.json").read_text())
    metric, step = report["best"]["metric"], report["best"]["step"]
    best = next(r for r in report["rows"] if r["step"] == step)["metrics"]
    value, floor = best[metric]["value"], best[metric]["floor"]
    row = {
        "config": name,
        "preset": preset,
        "model": model,
        "changed": changed + (f"; {note}" if note else ""),
        "wall_min": round(minutes, 2),
        "best_step": step,
        "metric": metric,
        "value": value,
        "floor": floor,
        "ratio": value / floor if floor else None,
    }
    for key in ("classifier_score", "classes_covered", "smallest_class_share"):
        if key in best:
            row[key] = best[key]["value"]
            row[f"{key}_floor"] = best[key]["floor"]
    health = best.get("chain_worst_rms_ratio")
    if health is not None:
        row["chain_worst_rms_ratio"] = health["value"]
    return row


def _format(row: dict) -> str:
    cells = [
        row["config"],
        row["preset"],
        row["model"],
        row["changed"],
        f"{row['wall_min']:.2f}",
        f"{row['metric']} {row['value']:.3g} / {row['floor']:.3g} = {row['ratio']:.2f}x",
        f"{row.get('classifier_score', float('nan')):.2f}",
        str(row.get("classes_covered", "-")),
        f"{row.get('smallest_class_share', float('nan')):.3f}",
    ]
    return "| " + " | ".join(cells) + " |"


HEADER = (
    "| config | preset | model | changed | wall min | best metric / floor | classifier score "
    "| classes | smallest class share |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("configs", nargs="*", default=["default"])
    parser.add_argument("--output-root", default=str(REPO / "runs" / "quality"))
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="PART.KEY=JSON",
        help="one more change, e.g. --set train.ema_decay=0.995 (recorded in the row)",
    )
    parser.add_argument("--suffix", default="", help="added to run names (repeat a config)")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--run-name", help=argparse.SUPPRESS)
    parser.add_argument("--out-jsonl", default=None, help="append each row as JSON here")
    args = parser.parse_args()

    extra: dict = {}
    for item in args.set:
        key, _, value = item.partition("=")
        part, _, field = key.partition(".")
        if part not in ("train", "eval", "samples") or not field or not value:
            parser.error(f"--set wants PART.KEY=JSON with PART train, eval or samples: {item!r}")
        extra.setdefault(part, {})[field] = json.loads(value)
    if args.list:
        for name, (preset, model, changed, _) in CONFIGS.items():
            print(f"{name:14s} {preset:10s} {model:5s} {changed}")
        return
    if args.child:
        _child(args.child, args.run_name or args.child, args.output_root, extra)
        return
    unknown = [c for c in args.configs if c not in CONFIGS]
    if unknown:
        parser.error(f"unknown configurations {unknown}; --list shows them")
    note = ", ".join(args.set)
    print(HEADER, flush=True)
    for name in args.configs:
        run_name = name + args.suffix
        run_dir = pathlib.Path(args.output_root) / run_name
        if run_dir.exists():
            parser.error(f"{run_dir} exists: a row times a whole job, so start from nothing")
        command = [sys.executable, __file__, "--child", name, "--run-name", run_name]
        command += ["--output-root", args.output_root, *[f"--set={item}" for item in args.set]]
        log = pathlib.Path(args.output_root) / f"{run_name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        with open(log, "w") as handle:
            # `python benchmarks/sample_quality.py` puts benchmarks/ on the child's path, not the
            # repository whose flows and tasks it runs.
            path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
            env = {**os.environ, "PYTHONPATH": path}
            code = subprocess.call(
                command, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT
            )
        minutes = (time.perf_counter() - start) / 60
        if code != 0:
            print(f"| {name} | failed with exit {code}: see {log} |", flush=True)
            continue
        row = _row(name, run_dir, minutes, note)
        print(_format(row), flush=True)
        if args.out_jsonl:
            with open(args.out_jsonl, "a") as handle:
                handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
