"""The two commands a newcomer starts with, `make test` and `make run`, in a fresh clone.

The clone's `.venv` is made by the Python running this test (`make PYTHON=...`), so it inherits
the packages already installed here instead of downloading them again; everything else is what a
newcomer gets: a new environment, the project installed into it, ruff and a pytest selection,
then the job on the `tiny` preset twice (the second time the environment and the finished run are
both reused). The clone is of the committed HEAD, not the working tree.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from tests.local_servers import free_port, healthy

ROOT = pathlib.Path(__file__).resolve().parents[1]
# The commands of the documentation's blocks marked "runs in tests/test_make.py" (README.md's two
# commands, the docs' first job and local deploy), as the test below runs each: `make run` on
# the `tiny` preset, `make test` on a selection of tests, deploy-local on a free port.
# tests/test_docs.py checks that those blocks hold no other command.
DOC_COMMANDS = (
    "make run",
    "make test",
    "make run PRESET=tiny",
    "make deploy-local PORT=4200",
    "make deploy-stop PORT=4200",
)

pytestmark = [
    pytest.mark.system,
    pytest.mark.cost(175),
    pytest.mark.skipif(
        shutil.which("make") is None or shutil.which("git") is None or not (ROOT / ".git").exists(),
        reason="needs make, git and a git checkout of the project",
    ),
]


def _make(clone: pathlib.Path, env: dict, *args: str, timeout: float = 600) -> str:
    done = subprocess.run(
        ["make", f"PYTHON={sys.executable}", *args],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, f"make {' '.join(args)} exited {done.returncode}:\n{out[-6000:]}"
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_make_test_and_make_run_from_a_fresh_clone(tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=120)
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PYTEST_", "PREFECT_")) and key != "VIRTUAL_ENV"
    }
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")  # the job's temporary server's database

    out = _make(
        clone,
        env,
        "test",
        "PYTEST_ARGS=-n 0 tests/lib/test_schedules.py -k 'linear_endpoints or sigma_schedule_is_geometric'",
    )
    assert f"creating {clone}/.venv" in out
    assert "All checks passed!" in out  # ruff
    assert " passed" in out and " failed" not in out
    stamp = clone / ".venv" / ".diffusion-lib-stamp.json"
    assert json.loads(stamp.read_text())["project_dir"] == str(clone)
    # The clone's own code, whatever the working directory.
    where = subprocess.run(
        [
            str(clone / ".venv/bin/python"),
            "-c",
            "import diffusion_lib; print(diffusion_lib.__file__)",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.strip() == str(clone / "diffusion_lib" / "__init__.py")
    installed_at = stamp.stat().st_mtime_ns

    out = _make(clone, env, "run", "PRESET=tiny")
    assert "reusing" in out and "installing" not in out
    runs = [p for p in (clone / "runs").iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    grid = runs[0] / "render" / "grid.png"
    assert grid.is_file() and grid.stat().st_size > 0
    assert "Outputs in runs/tiny: " in out  # the closing summary, one run per preset

    metrics = runs[0] / "metrics.jsonl"
    trained = (metrics.read_bytes(), metrics.stat().st_mtime_ns)
    out = _make(clone, env, "run", "PRESET=tiny")  # the same run, found finished
    assert "reusing" in out and "installing" not in out
    assert stamp.stat().st_mtime_ns == installed_at  # nothing installed again
    assert "Outputs in runs/tiny: " in out
    assert (metrics.read_bytes(), metrics.stat().st_mtime_ns) == trained  # not trained again
    assert [p for p in (clone / "runs").iterdir() if p.is_dir()] == runs

    # The Deploy section's local path in the background, and its stop target.
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    try:
        out = _make(clone, env, "deploy-local", f"PORT={port}")
        assert "worker started" in out and healthy(api)
        pid = int((clone / ".deploy-local" / "worker.pid").read_text())
        assert _alive(pid)
        inspect = subprocess.run(
            [str(clone / ".venv/bin/prefect"), "deployment", "inspect", "train-and-sample/nightly"],
            env={**env, "PREFECT_API_URL": api},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert inspect.returncode == 0 and "0 2 * * *" in inspect.stdout, inspect.stdout[-2000:]
    finally:
        out = _make(clone, env, "deploy-stop", f"PORT={port}")
    assert not healthy(api)
    assert not any((clone / ".deploy-local").glob("*.pid"))  # the server's and the worker's
    assert not _alive(pid) or _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        return pathlib.Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True
