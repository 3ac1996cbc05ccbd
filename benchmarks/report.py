"""The benchmark scripts' tables: printed as Markdown, and with --markdown written into the pages.

Each script collects its figures in `Table`s (a row is printed as soon as it is added, so a long
run shows its progress) and ends with `publish`. With `--markdown`, every table replaces its
section in the documentation: the text between

    <!-- begin benchmark: KEY -->
    <!-- end benchmark: KEY -->

wherever that pair stands in README.md or docs/**/*.md (the same table may stand in several
places). A section carries the command that made it, the machine it ran on (cores, CPU, and the
float32 and bfloat16 matmul throughput measured in the same run: machines of this kind run 2x
faster or slower from one day to the next, so a figure means something only beside them) and n.
All sections are checked before any file is written, and each file is replaced atomically: a
missing pair of markers is an error naming the key, and nothing is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import platform
import re
import shlex
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
BEGIN = "<!-- begin benchmark: {key} -->"
END = "<!-- end benchmark: {key} -->"


def pages(root: pathlib.Path = REPO) -> list[pathlib.Path]:
    """The files a table may be written into: README.md and the documentation site's pages."""
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


@dataclasses.dataclass
class Table:
    """One table: `key` names its section in the pages; `n` says how many runs each row is."""

    key: str
    columns: list[str]
    n: str = "1 run per row"
    caption: str = ""
    rows: list[list[str]] = dataclasses.field(default_factory=list)
    stream: bool = True

    def add(self, *cells: object) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(
                f"table {self.key}: {len(cells)} cells for {len(self.columns)} columns"
            )
        if self.stream and not self.rows:
            print(f"\n{self.key}" + (f": {self.caption}" if self.caption else ""))
            print(_line(self.columns) + "\n" + _line(["---"] * len(self.columns)), flush=True)
        self.rows.append([_cell(cell) for cell in cells])
        if self.stream:
            print(_line(self.rows[-1]), flush=True)

    def markdown(self) -> str:
        lines = [_line(self.columns), _line(["---"] * len(self.columns))]
        lines += [_line(row) for row in self.rows]
        return "\n".join(lines)


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _line(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


@dataclasses.dataclass(frozen=True)
class Machine:
    cores: int
    cpu: str
    matmul_fp32: float
    matmul_bf16: float
    gpus: int

    def describe(self) -> str:
        gpus = f"{self.gpus} GPU(s)" if self.gpus else "no GPU"
        return (
            f"{self.cores} cores ({self.cpu}), {gpus}; matmul {self.matmul_fp32:.0f} GFLOP/s "
            f"float32, {self.matmul_bf16:.0f} GFLOP/s bfloat16 (2048x2048, best of 10)"
        )


def matmul_gflops(dtype: str = "float32", n: int = 2048, repeats: int = 10) -> float:
    """Best-of-`repeats` throughput of one n x n matrix product, in GFLOP/s."""
    import tensorflow as tf

    a = tf.cast(tf.random.normal([n, n]), dtype)
    b = tf.cast(tf.random.normal([n, n]), dtype)
    product = tf.function(lambda x, y: tf.matmul(x, y))
    product(a, b).numpy()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        product(a, b).numpy()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def _cpu_name() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure_machine() -> Machine:
    """The machine as it runs now: cores this process may use and its matmul throughput."""
    import tensorflow as tf

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return Machine(
        cores=cores or 1,
        cpu=_cpu_name(),
        matmul_fp32=matmul_gflops("float32"),
        matmul_bf16=matmul_gflops("bfloat16"),
        gpus=len(tf.config.list_physical_devices("GPU")),
    )


def add_markdown_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--markdown",
        action="store_true",
        help="also write the tables into their sections of README.md and docs/ "
        "(<!-- begin benchmark: KEY --> ... <!-- end benchmark: KEY -->)",
    )


def command(script: str, argv: list[str] | None = None) -> str:
    """The command line that made a table, without --markdown."""
    argv = sys.argv[1:] if argv is None else argv
    kept = [arg for arg in argv if arg != "--markdown"]
    return shlex.join(["python", f"benchmarks/{pathlib.Path(script).name}", *kept])


def section(table: Table, machine: Machine, command_line: str) -> str:
    caption = f"{table.caption}\n\n" if table.caption else ""
    return (
        f"{caption}| | |\n| --- | --- |\n| command | `{command_line}` |\n"
        f"| machine | {_cell(machine.describe())} |\n| n | {_cell(table.n)} |\n\n"
        f"{table.markdown()}"
    )


def replace_sections(texts: dict[pathlib.Path, str], bodies: dict[str, str]) -> dict:
    """`texts` with each key's section body replaced; raises KeyError naming the keys found
    nowhere. Returns only the files that changed."""
    changed, found = {}, set()
    for path, text in texts.items():
        new = text
        for key, body in bodies.items():
            pattern = re.compile(
                re.escape(BEGIN.format(key=key)) + r"\n.*?" + re.escape(END.format(key=key)),
                re.DOTALL,
            )
            if pattern.search(new):
                found.add(key)
                block = f"{BEGIN.format(key=key)}\n{body}\n{END.format(key=key)}"
                new = pattern.sub(lambda _, block=block: block, new)
        if new != text:
            changed[path] = new
    missing = sorted(set(bodies) - found)
    if missing:
        raise KeyError(
            "no section for "
            + ", ".join(missing)
            + ": add '<!-- begin benchmark: KEY -->' and '<!-- end benchmark: KEY -->' on lines "
            "of their own where the table belongs, in README.md or a page under docs/"
        )
    return changed


def publish(
    script: str,
    args: argparse.Namespace,
    tables: list[Table],
    machine: Machine,
    root: pathlib.Path = REPO,
) -> None:
    """Prints where the figures were measured; with args.markdown writes every non-empty table
    into its sections (all checked first, each file replaced atomically)."""
    line = command(script)
    print(f"\nmachine: {machine.describe()}\ncommand: {line}")
    if not getattr(args, "markdown", False):
        return
    bodies = {t.key: section(t, machine, line) for t in tables if t.rows}
    files = pages(root)
    try:
        changed = replace_sections({p: p.read_text() for p in files if p.is_file()}, bodies)
    except KeyError as error:
        sys.exit(f"--markdown: {error.args[0]}")
    for path, text in changed.items():
        handle = tempfile.NamedTemporaryFile(
            "w", dir=path.parent, prefix=f".{path.name}.", delete=False
        )
        with handle:
            handle.write(text)
        os.chmod(handle.name, path.stat().st_mode & 0o777)
        os.replace(handle.name, path)
        print(f"updated {path.relative_to(root)}")


def clone_at(ref: str, parser: argparse.ArgumentParser, prefix: str) -> pathlib.Path:
    """A temporary clone of this repository at commit `ref` (its parent directory is the
    caller's to remove); a ref that names no commit is the parser's error."""
    import subprocess
    import tempfile

    commit = subprocess.run(
        ["git", "rev-parse", "--verify", f"{ref}^{{commit}}"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    if commit.returncode != 0:
        parser.error(f"--against: {ref!r} is not a commit of {REPO}")
    clone = pathlib.Path(tempfile.mkdtemp(prefix=prefix)) / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    subprocess.run(["git", "checkout", "-q", commit.stdout.strip()], cwd=clone, check=True)
    return clone
