"""The benchmark scripts' tables reach the pages whole, or not at all (benchmarks/report.py)."""

import importlib.util
import inspect
import pathlib
import re
import stat
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p for p in (ROOT / "benchmarks").glob("*.py") if p.name != "report.py")


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / name)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


report = _module("report.py")
MACHINE = report.Machine(cores=2, cpu="Test CPU", matmul_fp32=400.0, matmul_bf16=800.0, gpus=0)


def _pages(root: pathlib.Path, readme: str, page: str) -> None:
    (root / "docs").mkdir(parents=True)
    (root / "README.md").write_text(readme)
    (root / "docs" / "benchmarks.md").write_text(page)


def _section(key: str, body: str = "old") -> str:
    return f"<!-- begin benchmark: {key} -->\n{body}\n<!-- end benchmark: {key} -->\n"


def test_a_table_replaces_its_sections_wherever_they_stand(tmp_path):
    _pages(tmp_path, "# R\n" + _section("a") + "tail\n", "# B\n" + _section("a") + _section("b"))
    (tmp_path / "README.md").chmod(0o644)
    table = report.Table("a", ["x", "y"], n="3 runs", caption="what", stream=False)
    table.add(1, "p|q")
    args = type("Args", (), {"markdown": True})()
    report.publish("benchmarks/demo.py", args, [table, report.Table("b", ["z"])], MACHINE, tmp_path)
    readme = (tmp_path / "README.md").read_text()
    page = (tmp_path / "docs" / "benchmarks.md").read_text()
    assert readme.startswith("# R\n<!-- begin benchmark: a -->\nwhat\n") and readme.endswith(
        "<!-- end benchmark: a -->\ntail\n"
    )
    assert "| 1 | p\\|q |" in readme and "| n | 3 runs |" in readme
    assert "2 cores (Test CPU), no GPU; matmul 400 GFLOP/s float32, 800" in readme
    assert "`python benchmarks/demo.py" in readme and "--markdown" not in readme
    # The same table on the page; b had no rows, so its section is left as it was.
    assert page.count("| 1 | p\\|q |") == 1 and _section("b") in page
    assert stat.S_IMODE((tmp_path / "README.md").stat().st_mode) == 0o644


def test_a_missing_section_writes_nothing_and_names_the_key(tmp_path):
    _pages(tmp_path, "# R\n" + _section("a"), "# B\n")
    before = (tmp_path / "README.md").read_text()
    first, second = (
        report.Table("a", ["x"], stream=False),
        report.Table("gone", ["x"], stream=False),
    )
    first.add(1)
    second.add(2)
    args = type("Args", (), {"markdown": True})()
    with pytest.raises(SystemExit, match="no section for gone"):
        report.publish("benchmarks/demo.py", args, [first, second], MACHINE, tmp_path)
    assert (tmp_path / "README.md").read_text() == before
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["README.md", "benchmarks.md", "docs"]


def test_a_row_must_fill_the_columns_and_the_command_drops_markdown():
    table = report.Table("a", ["x", "y"], stream=False)
    with pytest.raises(ValueError, match="table a: 1 cells for 2 columns"):
        table.add(1)
    assert report.command("x/sample_quality.py", ["default", "--markdown", "--n", "3"]) == (
        "python benchmarks/sample_quality.py default --n 3"
    )


def test_every_script_publishes_and_every_section_in_the_pages_is_filled():
    for script in SCRIPTS:
        text = script.read_text()
        assert "add_markdown_option(parser)" in text and "publish(" in text, script.name
    opened = closed = 0
    for page in report.pages(ROOT):
        text = page.read_text()
        begins = re.findall(r"<!-- begin benchmark: (\S+) -->", text)
        assert begins == re.findall(r"<!-- end benchmark: (\S+) -->", text), page
        opened, closed = opened + len(begins), closed + text.count("<!-- end benchmark:")
        for key in begins:
            body = text.split(f"<!-- begin benchmark: {key} -->\n", 1)[1].split("<!-- end")[0]
            assert "| command |" in body and "| machine |" in body, f"{page.name}: {key} is empty"
    assert opened == closed and opened >= 10


def test_the_quality_benchmark_keeps_the_signature_the_flow_reads(monkeypatch):
    """The flow passes resolve() the parameters its signature names: a wrapper must keep it."""
    from tasks import presets

    original = inspect.signature(presets.resolve)
    monkeypatch.setattr(presets, "resolve", presets.resolve)
    _module("sample_quality.py")._apply({"train": {"num_steps": 10}})
    assert inspect.signature(presets.resolve) == original
