"""Sample quality per CPU minute: named configurations through the real pipeline, one row each.

    python benchmarks/sample_quality.py default ncsn-default tiny-default
    python benchmarks/sample_quality.py --list
    python benchmarks/sample_quality.py ddpm-before --output-root /tmp/quality

Each configuration is a preset and model of the `train-and-sample` flow plus changes to the
preset's train / eval / samples settings, applied in the child process before the flow resolves
its preset (the flow itself, its temporary Prefect server, the training worker, evaluation and
rendering are the ones `python -m flows.train_and_sample` runs). Every configuration runs in a
fresh child process, alone, and its wall time is the whole job's, start-up included. One table
per preset, a row per job: its best checkpoint (by FID for images, balanced_pr for points)
against the real-versus-real floors; job s is the flow's own total of its stages (the wall time
adds the interpreter's and the temporary server's start). The presets' own rows (`default`,
`ncsn-default`, ...) run them exactly as `make run` does and also fill the README's table of
the main job; `*-before` rows restore earlier defaults, so a change is measured before and
after on the same machine, one after the other. With --markdown the tables replace their
sections in README.md and docs/ (benchmarks/report.py).
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import report  # noqa: E402

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
    "edm-default": ("mnist-cpu", "edm", "the preset as it is", {}),
    "edm-float32": (
        "mnist-cpu",
        "edm",
        "in float32 instead of precision auto (mixed bfloat16 on this CPU)",
        {"train": {"precision": "float32"}},
    ),
    "ddpm-unconditional": (
        "mnist-cpu",
        "ddpm",
        "without labels, the EDM preset's 3,000 steps, in float32",
        {"train": {"num_classes": 0, "num_steps": 3_000, "precision": "float32"}},
    ),
    "edm-before": (
        "mnist-cpu",
        "edm",
        "EDM's own training noise N(-1.2, 1.2^2), 1,900 steps",
        {"train": {"noise_log_mean": -1.2, "noise_log_std": 1.2, "num_steps": 1_900}},
    ),
    **{
        f"edm-{steps}": ("mnist-cpu", "edm", f"{steps:,} steps", {"train": {"num_steps": steps}})
        for steps in (1_900, 4_000)
    },
    "edm-wide-noise": (
        "mnist-cpu",
        "edm",
        "training noise N(-0.4, 1.4^2)",
        {"train": {"noise_log_mean": -0.4, "noise_log_std": 1.4}},
    ),
    "edm-wide-noise-1900": (
        "mnist-cpu",
        "edm",
        "training noise N(-0.4, 1.4^2), 1,900 steps",
        {"train": {"noise_log_mean": -0.4, "noise_log_std": 1.4, "num_steps": 1_900}},
    ),
    "edm-log-sigma-before": (
        "mnist-cpu",
        "edm",
        "EDM's noise, 1,900 steps, the noise embedded as 100 ln sigma instead of ln(sigma) / 4",
        {
            "train": {
                "noise_log_mean": -1.2,
                "noise_log_std": 1.2,
                "num_steps": 1_900,
                "overrides": {"conditioning": "log_sigma"},
            }
        },
    ),
    **{
        f"{preset}-{model}": (preset, model, "the preset as it is", {})
        for preset in ("tiny", "swiss-roll")
        for model in ("ddpm", "ncsn", "sde-vp", "sde-ve", "edm")
    },
    "tiny-before": (
        "tiny",
        "ddpm",
        "earlier tiny: 600 steps of batch 128 at a constant 1e-3, DDIM with 10 steps",
        {
            "train": {
                "batch_size": 128,
                "learning_rate": 1e-3,
                "warmup_steps": 0,
                "lr_schedule": "constant",
                "decay_steps": 0,
                "final_lr_fraction": 0.0,
                "num_steps": 600,
                "checkpoint_every": 300,
                "log_every": 50,
            },
            "eval": {"sampler": "ddim", "num_steps": 10},
            "samples": {"sampler": "ddim", "num_steps": 10},
        },
    ),
}


def _apply(changes: dict) -> None:
    """Makes every resolve() in this process apply `changes` ({part: {key: value}}, see
    Pipeline.with_settings) to the plan; call it before the flows are imported."""
    from tasks import presets

    original = presets.resolve

    @functools.wraps(original)  # the flow passes resolve() the parameters its signature names
    def resolve(*args, **kwargs):
        plan = original(*args, **kwargs)
        for part, overrides in changes.items():
            plan = plan.with_settings(part, **overrides)
        return plan

    presets.resolve = resolve


# The main job's pictures, shown by README.md and the documentation's home page: the grid, and
# the sampling GIF's first rows (the whole GIF is about 1 MB).
PICTURES = {"grid.png": "main-job-grid.png", "sampling.gif": "main-job-sampling.gif"}
GIF_ROWS = 3


def _publish_pictures(run_dir: pathlib.Path, assets: pathlib.Path = REPO / "docs" / "assets"):
    """Copies the main job's grid and the top of its sampling GIF from `run_dir`'s render/ into
    `assets`."""
    import imageio.v3 as iio

    from diffusion_lib.reports import PREVIEW_ROWS

    for name, target in PICTURES.items():
        source = run_dir / "render" / name
        staged = assets / f".{target}.partial"
        if name.endswith(".gif"):
            frames = iio.imread(source, index=None)
            durations = [iio.immeta(source, index=i)["duration"] for i in range(len(frames))]
            tile = (frames.shape[1] - 1) // PREVIEW_ROWS  # rows of digits, 1-pixel gaps
            iio.imwrite(
                staged,
                frames[:, : 1 + GIF_ROWS * tile],
                extension=".gif",
                duration=durations,
                loop=0,
            )
        else:
            shutil.copyfile(source, staged)
        os.replace(staged, assets / target)
        print(f"updated {(assets / target).relative_to(REPO)}")


def _child(name: str, run_name: str, output_root: str, extra: dict) -> None:
    preset, model, _, changes = CONFIGS[name]
    merged = copy.deepcopy(changes)
    for part, overrides in extra.items():
        merged.setdefault(part, {}).update(overrides)
    _apply(merged)
    from flows.train_and_sample import train_and_sample

    train_and_sample(preset=preset, model=model, output_root=output_root, run_name=run_name)


def _job_seconds(log: pathlib.Path) -> float | None:
    """The flow's closing "Done in N s" figure (its stages' total), from the child's log."""
    found = re.findall(r"Done in (\d+) s", log.read_text(errors="replace"))
    return float(found[-1]) if found else None


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
        "note": note,
        "wall_min": round(minutes, 2),
        "best_step": step,
        "metric": metric,
        "value": value,
        "floor": floor,
        "ratio": value / floor if floor else None,
    }
    for key in (
        "classifier_score",
        "classes_covered",
        "smallest_class_share",
        "precision",
        "recall",
    ):
        if key in best:
            row[key] = best[key]["value"]
            row[f"{key}_floor"] = best[key]["floor"]
    health = best.get("chain_worst_rms_ratio")
    if health is not None:
        row["chain_worst_rms_ratio"] = health["value"]
    return row


def _over_floor(row: dict, key: str) -> str:
    if key not in row:
        return "-"
    return f"{row[key]:.3g} / {row[key + '_floor']:.3g} = {row[key] / row[key + '_floor']:.2f}x"


def _tables() -> dict[str, report.Table]:
    """One table per preset (its key `sample_quality:PRESET`), and the main job's in README."""
    image_columns = ["config", "model", "changed", "wall min", "job s", "best step"]
    image_columns += ["FID / floor", "classifier score", "classes", "smallest class share"]
    point_columns = ["config", "model", "changed", "wall min", "job s", "best step"]
    point_columns += ["balanced_pr", "precision / floor", "recall / floor"]
    tables = {
        preset: report.Table(
            f"sample_quality:{preset}",
            image_columns if preset.startswith("mnist") else point_columns,
            caption=f"`{preset}`, the best checkpoint of each job",
        )
        for preset in sorted({preset for preset, _, _, _ in CONFIGS.values()})
    }
    tables["main-job"] = report.Table(
        "sample_quality:main-job",
        [
            "model",
            "job time",
            "FID (real-vs-real floor)",
            "classifier score",
            "classes",
            "rarest class",
        ],
        stream=False,
    )
    return tables


def _main_job() -> str:
    """The configuration that is the main job as `make run` runs it: mnist-cpu's default model,
    the preset as it is."""
    from tasks.presets import default_model

    model = default_model("mnist-cpu")
    return next(
        name
        for name, (preset, m, _, changes) in CONFIGS.items()
        if (preset, m, changes) == ("mnist-cpu", model, {})
    )


def _add(tables: dict[str, report.Table], row: dict) -> None:
    cells = [row["config"], row["model"], row["changed"], f"{row['wall_min']:.2f}"]
    cells += ["-" if row["job_s"] is None else f"{row['job_s']:.0f}", row["best_step"]]
    if row["metric"] != "fid":
        tables[row["preset"]].add(
            *cells,
            f"{row['value']:.3f}",
            _over_floor(row, "precision"),
            _over_floor(row, "recall"),
        )
        return
    tables[row["preset"]].add(
        *cells,
        f"{row['value']:.3g} / {row['floor']:.3g} = {row['ratio']:.2f}x",
        f"{row['classifier_score']:.2f} (real {row['classifier_score_floor']:.2f})",
        row["classes_covered"],
        f"{row['smallest_class_share']:.3f}",
    )
    if row["preset"] == "mnist-cpu" and CONFIGS[row["config"]][3] == {} and not row["note"]:
        default = " (the default)" if row["config"] == _main_job() else ""
        tables["main-job"].add(
            f"`--model {row['model']}`{default}",
            f"{row['job_s'] / 60:.1f} min" if row["job_s"] else f"{row['wall_min']:.1f} min",
            f"{row['value']:.2f} ({row['floor']:.2f}, {row['ratio']:.2f}x)",
            f"{row['classifier_score']:.2f} (real digits {row['classifier_score_floor']:.2f})",
            f"{row['classes_covered']} of 10",
            f"{row['smallest_class_share']:.1%} of the samples",
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("configs", nargs="*", help="default: the main job, unless --rows")
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
    parser.add_argument(
        "--rows",
        action="append",
        default=[],
        metavar="JSONL",
        help="rows an earlier run of this script wrote with --out-jsonl, on this machine, "
        "published beside this run's (the tables say how many)",
    )
    report.add_markdown_option(parser)
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
    if not args.configs and not args.rows:
        args.configs = [_main_job()]
    unknown = [c for c in args.configs if c not in CONFIGS]
    if unknown:
        parser.error(f"unknown configurations {unknown}; --list shows them")
    note = ", ".join(args.set)
    machine = report.measure_machine()
    tables = _tables()
    failed: list[str] = []
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
            failed.append(f"{name} (exit {code}, log {log})")
            print(f"{name} failed with exit {code}: see {log}", flush=True)
            continue
        row = _row(name, run_dir, minutes, note) | {"job_s": _job_seconds(log)}
        _add(tables, row)
        if args.out_jsonl:
            with open(args.out_jsonl, "a") as handle:
                handle.write(json.dumps(row) + "\n")
    earlier = [json.loads(line) for path in args.rows for line in open(path) if line.strip()]
    earlier = [row for row in earlier if row["config"] not in args.configs]  # this run's replace
    for row in earlier:
        _add(tables, row)
    parts = [f"{len(args.configs)} job(s) run now, one after another"] if args.configs else []
    if earlier:
        parts.append(
            f"{len(earlier)} recorded by earlier runs of this script in {', '.join(args.rows)}"
        )
    runs = "; ".join(parts) + "; the samplers' seeds are fixed"
    for table in tables.values():
        table.n = f"1 job per row ({runs})"
    if failed:
        sys.exit("not published, a job failed: " + "; ".join(failed))
    report.publish(__file__, args, list(tables.values()), machine)
    # The pictures of the main job's row, from its run directory (this run's, or the one an
    # earlier run left under output_root).
    main_run = pathlib.Path(args.output_root) / f"{_main_job()}{args.suffix}"
    published = set(args.configs) | {row["config"] for row in earlier}
    if args.markdown and _main_job() in published and not args.set and main_run.is_dir():
        _publish_pictures(main_run)


if __name__ == "__main__":
    main()
