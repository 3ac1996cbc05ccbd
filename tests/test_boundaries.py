"""The layers of CONTRIBUTING.md, checked: the library never loads the orchestrator, and the
math does not reach into training, data, evaluation or rendering."""

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
MATH_MODULES = [
    "schedules",
    "diffusion",
    "likelihoods",
    "score_matching",
    "analytic",
    "samplers",
    "_checks",
]
FORBIDDEN_FOR_MATH = {
    "training",
    "data",
    "evaluation",
    "render",
    "reports",
    "networks",
    "sample_sets",
    "draw",
    "run",
}


def test_the_forbidden_modules_exist():
    """A name here that no module has would forbid nothing."""
    package = ROOT / "diffusion_lib"
    for name in FORBIDDEN_FOR_MATH:
        assert (package / name).is_dir() or (package / f"{name}.py").is_file(), name


def test_importing_the_library_does_not_load_prefect():
    code = (
        "import sys, importlib, pkgutil, diffusion_lib\n"
        "for m in pkgutil.walk_packages(diffusion_lib.__path__, 'diffusion_lib.'):\n"
        "    if not m.name.endswith('__main__'):\n"
        "        importlib.import_module(m.name)\n"
        "bad = sorted(n for n in sys.modules if n.split('.')[0] in ('prefect', 'tasks', 'flows'))\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def _imports(path: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_math_modules_do_not_import_training_data_or_rendering():
    package = ROOT / "diffusion_lib"
    for name in MATH_MODULES:
        target = package / name
        files = sorted(target.rglob("*.py")) if target.is_dir() else [target.with_suffix(".py")]
        for file in files:
            for imported in _imports(file):
                parts = imported.split(".")
                if parts[0] == "diffusion_lib" and len(parts) > 1:
                    assert parts[1] not in FORBIDDEN_FOR_MATH, f"{file.name} imports {imported}"
                assert parts[0] not in ("prefect", "tasks", "flows"), (
                    f"{file.name} imports {imported}"
                )
