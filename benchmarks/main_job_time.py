"""The main job's wall time (`make run`'s `python -m flows.train_and_sample --preset mnist-cpu`),
against another commit's: the bar is the working tree within 10% of it.

    python benchmarks/main_job_time.py --against REF [--repeats N] [--preset mnist-cpu]

Each run is the whole job in a new run directory, alone on the machine, with a temporary Prefect
server of its own, as `make run` starts it. With --against REF (e.g. the commit before a
change) the same job runs from a temporary clone of REF (its packages first on the path, this
Python and environment otherwise), alternated with the working tree's, REF first in each pair:
this machine's speed moves by up to 2x between days, so only runs side by side compare. Printed
for each run: the wall time, the job's own stage times and the last checkpoint's FID (the same
computation must give the same figure).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from report import Table, add_markdown_option, clone_at, measure_machine, publish  # noqa: E402

BAR = 1.10  # the working tree's mean time over REF's
DONE = re.compile(r"Done in (\d+) s \(([^)]*)\)")


def _run(directory: pathlib.Path, preset: str, scratch: pathlib.Path) -> dict:
    out = pathlib.Path(tempfile.mkdtemp(prefix="runs-", dir=scratch))
    env = {**os.environ, "PYTHONPATH": str(directory)}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "flows.train_and_sample", "--preset", preset]
        + ["--output-root", str(out), "--run-name", "job"],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"the job in {directory} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    stages = DONE.findall(done.stdout + done.stderr)
    metrics = json.loads((out / "job" / "eval" / "metrics.json").read_text())
    fid = metrics["rows"][-1]["metrics"].get("fid", {}).get("value")
    shutil.rmtree(out, ignore_errors=True)
    return {"wall": wall, "stages": stages[-1][1] if stages else "", "fid": fid}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", required=True, help="the commit to compare with")
    parser.add_argument("--repeats", type=int, default=1, help="pairs of runs (default 1)")
    parser.add_argument("--preset", default="mnist-cpu", help="the job (default: the main job)")
    add_markdown_option(parser)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats: must be 1 or more")
    machine = measure_machine()
    clone = clone_at(args.against, parser, "main-job-time-")
    scratch = clone.parent
    sides = {args.against: clone, "working tree": ROOT}
    table = Table(
        "main_job_time",
        ["pair", "side", "wall s", "stages", "FID"],
        n=f"{args.repeats} pair(s), alternated, {args.against} first, each run alone",
        caption=f"`python -m flows.train_and_sample --preset {args.preset}` in a new run directory",
    )
    walls: dict[str, list[float]] = {name: [] for name in sides}
    try:
        for pair in range(1, args.repeats + 1):
            for name, directory in sides.items():
                row = _run(directory, args.preset, scratch)
                walls[name].append(row["wall"])
                fid = "-" if row["fid"] is None else f"{row['fid']:.4f}"
                table.add(pair, name, f"{row['wall']:.0f}", row["stages"], fid)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    before, after = (sum(w) / len(w) for w in walls.values())
    ratios = [a / b for a, b in zip(walls["working tree"], walls[args.against], strict=True)]
    table.add("mean", f"working tree / {args.against}", f"{after / before:.3f}x", "", "")
    print(
        f"mean: {after:.0f} s against {before:.0f} s at {args.against} ({after / before:.3f}x; "
        f"each pair {', '.join(f'{r:.3f}x' for r in ratios)}); the bar: at most {BAR:.2f}x: "
        + ("met" if after / before <= BAR else "NOT met")
    )
    publish(__file__, args, [table], machine)


if __name__ == "__main__":
    main()
