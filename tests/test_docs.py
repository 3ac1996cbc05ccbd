"""The README and the documentation site: every command block runs somewhere or says it is
illustrative, the Python examples run as written, the site builds with no broken link, and the
pages a user reads carry no history.

A fenced block's marker is the HTML comment on the line before it (invisible when rendered):
`<!-- runs in tests/X.py -->` (that test runs it; for this file, the test below) or
`<!-- illustrative: why -->`. Shell blocks need one; Python blocks without one run here, each
page's in order in one namespace; other languages are output, not commands.
"""

import importlib
import os
import pathlib
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.cost(25)

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
SHELL = {"bash", "sh", "shell", "console"}
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.S | re.M)
MARKER = re.compile(r"<!-- (runs in (\S+)|illustrative\b[^>]*) -->\s*$")
# Words of a lab notebook, not of a user's document.
HISTORY = re.compile(
    r"(?<![\w\"])session(?![\w\"])|\bissue \d+|\bissues' closing|\b20\d\d-\d\d-\d\d\b", re.I
)


def _blocks(page: pathlib.Path) -> list[tuple[str, str, str | None, int]]:
    """(language, text, marker, line) of each fenced block of `page`."""
    text = page.read_text()
    out = []
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = MARKER.search(before)
        line = text.count("\n", 0, match.start()) + 1
        out.append((match.group(1), match.group(2), marker.group(1) if marker else None, line))
    return out


def _commands(block: str) -> list[str]:
    """A shell block's commands: continuation lines joined, comments and blank lines dropped."""
    joined = block.replace("\\\n", " ")
    return [c.split("  #")[0].strip() for c in joined.splitlines() if c.strip()]


def test_the_readme_is_a_users_page_of_at_most_250_lines():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


def test_no_history_in_what_users_and_contributors_read():
    files = [*PAGES, ROOT / "CONTRIBUTING.md", ROOT / "deploy" / "README.md"]
    files += [ROOT / "benchmarks" / "README.md", ROOT / "Makefile", ROOT / "pyproject.toml"]
    for package in ("diffusion_lib", "tasks", "flows", "benchmarks", "tests", "scripts", "deploy"):
        files += [p for p in (ROOT / package).rglob("*") if p.suffix in {".py", ".yaml", ".json"}]
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in files
        if path.is_file() and path.name != "test_docs.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if HISTORY.search(line)
    ]
    assert found == []


def test_every_command_block_runs_in_a_test_or_is_marked_illustrative():
    unmarked, wrong = [], []
    for page in PAGES:
        name = page.relative_to(ROOT).as_posix()
        for language, text, marker, line in _blocks(page):
            if marker is None:
                if language in SHELL or language == "":
                    unmarked.append(f"{name}:{line}")
                continue
            if not marker.startswith("runs in "):
                continue
            where = marker.split()[-1]
            test = ROOT / where
            if not test.is_file():
                wrong.append(f"{name}:{line}: {where} does not exist")
            elif where == "tests/test_make.py":
                listed = importlib.import_module("tests.test_make").DOC_COMMANDS
                missing = [c for c in _commands(text) if c not in listed]
                if missing:
                    wrong.append(f"{name}:{line}: tests/test_make.py does not run {missing}")
            elif where != "tests/test_docs.py" and page.name not in test.read_text():
                wrong.append(f"{name}:{line}: {where} never reads {page.name}")
    assert unmarked == [], "blocks without a marker (see this module's docstring)"
    assert wrong == []


def test_the_python_examples_run_as_written():
    ran = 0
    for page in PAGES:
        namespace: dict = {}
        for language, text, marker, line in _blocks(page):
            if language == "python" and (marker is None or marker.startswith("runs in")):
                source = "\n" * (line) + text  # tracebacks point at the page's own lines
                exec(compile(source, str(page), "exec"), namespace)  # noqa: S102
                ran += 1
        if page.name == "library.md":
            gif = namespace["gif"]
            assert gif.frames.shape == (10, 16, 2) and gif.frame_steps[-1] == 20
            assert abs(float(namespace["exact"].numpy().mean()) + 1.0) < 0.3
    assert ran >= 10


def test_the_shell_blocks_this_test_owns_run_as_written():
    for page in PAGES:
        for language, text, marker, _ in _blocks(page):
            if language in SHELL and marker == "runs in tests/test_docs.py":
                done = subprocess.run(
                    ["bash", "-euo", "pipefail", "-c", text],
                    cwd=ROOT,
                    env={
                        **os.environ,
                        "PATH": f"{pathlib.Path(sys.executable).parent}:/usr/bin:/bin",
                    },
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
                assert done.returncode == 0, f"{page.name}:\n{text}\n{done.stderr[-3000:]}"


def test_the_site_builds_strictly(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "NO_MKDOCS_2_WARNING": "1", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-5000:]
    assert (tmp_path / "index.html").is_file()
    assert (tmp_path / "api" / "samplers" / "index.html").is_file()
    concepts = (tmp_path / "concepts" / "index.html").read_text()
    assert "probability-flow ODE" in concepts
    # The API reference is rendered from the docstrings.
    assert "GaussianDiffusion" in (tmp_path / "api" / "processes" / "index.html").read_text()
