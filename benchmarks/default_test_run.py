"""The default test run's wall time (the aim: 5 minutes or less on 2 cores, no test lost).

    python benchmarks/default_test_run.py [--against REF] [--repeats N]

Runs `python -m pytest -q` (the README's test command without ruff, with the addopts of
pyproject.toml: two workers) in the repository as it is on disk, each run alone, and prints for
each run the wall time, pytest's own figure, the CPU time of the run's processes and its counts
of passed and failed tests (a run with failures still has its time). With --against REF (a commit, e.g. the one before a change), the same run is
made in a temporary clone of REF, alternated with the working tree's (this shared machine's
speed moves such a run by 1.2x or more within the hour: compare runs made side by side), and
the two sets of collected test ids are compared: the tests only one side has are listed, so a
lost test shows. The clone runs with this Python and its environment; its own packages come
first on the path, as the tests start every process from the repository's root.
"""

from __future__ import annotations

import argparse
import pathlib
import re
import resource
import shutil
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from report import Table, add_markdown_option, clone_at, measure_machine, publish  # noqa: E402

BAR_SECONDS = 300.0
SUMMARY = re.compile(r"(\d+) passed.* in ([\d.]+)s")
FAILED = re.compile(r"(\d+) failed")


def _cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _collected(directory: pathlib.Path) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-n", "0"],
        cwd=directory,
        capture_output=True,
        text=True,
    )
    ids = {line for line in done.stdout.splitlines() if "::" in line}
    if not ids:
        sys.exit(f"collecting the tests in {directory} failed:\n{done.stdout[-3000:]}")
    return ids


def _run(directory: pathlib.Path) -> dict:
    cpu, start = _cpu_of_children(), time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q"], cwd=directory, capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    found = SUMMARY.findall(done.stdout)
    if not found:  # it did not run to its end: there is no time to report
        sys.exit(
            f"the test run in {directory} failed (exit {done.returncode}):\n" + done.stdout[-3000:]
        )
    failed = FAILED.findall(done.stdout.splitlines()[-1] if done.stdout else "")
    if failed:  # a time all the same, reported beside the failures
        print(done.stdout[-2000:], file=sys.stderr)
    passed, pytest_seconds = found[-1]
    return {
        "wall": wall,
        "pytest": float(pytest_seconds),
        "cpu": _cpu_of_children() - cpu,
        "passed": int(passed),
        "failed": int(failed[0]) if failed else 0,
    }


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {seconds % 60:4.1f} s"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", help="a commit to run alternately with the working tree")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each side (default 1)")
    add_markdown_option(parser)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats: must be 1 or more")
    machine = measure_machine()
    table = Table(
        "default_test_run",
        ["side", "run", "wall", "pytest's figure", "CPU", "passed", "failed"]
        + [f"within {BAR_SECONDS:.0f} s"],
        n=f"{args.repeats} run(s) of each side, alternated, each alone",
        caption="`python -m pytest -q` with pyproject.toml's options (two worker processes)",
    )

    sides = {"working tree": ROOT}
    scratch = None
    if args.against:
        clone = clone_at(args.against, parser, "test-run-time-")
        scratch = clone.parent
        sides = {args.against: clone, **sides}
    try:
        if args.against:
            before, after = (_collected(path) for path in sides.values())
            print(f"collected: {len(before)} at {args.against}, {len(after)} in the working tree")
            for name, only in (
                ("only at " + args.against, before - after),
                ("only in the working tree", after - before),
            ):
                for test_id in sorted(only):
                    print(f"  {name}: {test_id}")
        results: dict[str, list[dict]] = {name: [] for name in sides}
        for repeat in range(1, args.repeats + 1):
            for name, directory in sides.items():
                row = _run(directory)
                results[name].append(row)
                table.add(
                    name,
                    repeat,
                    _minutes(row["wall"]),
                    _minutes(row["pytest"]),
                    _minutes(row["cpu"]),
                    row["passed"],
                    row["failed"],
                    "yes" if row["pytest"] <= BAR_SECONDS else "NO",
                )
        for name, rows in results.items():
            mean = sum(row["pytest"] for row in rows) / len(rows)
            print(f"mean of {name}: {_minutes(mean)} (pytest's figure, n = {len(rows)})")
        publish(__file__, args, [table], machine)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
