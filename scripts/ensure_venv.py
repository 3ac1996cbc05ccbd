"""Creates or refreshes the project's virtual environment; `make` runs it before every target
that needs the project. Standard library only: it runs under whatever Python creates the
environment.

- Reused as it is while `pyproject.toml`, the extras and the checkout's path are those it was
  installed from (a stamp inside the environment records them); otherwise the project is
  installed again (`pip install -e ".[extras]"`), into the same environment.
- Created again when its interpreter no longer runs (a half-made environment from an
  interrupted first run, or a Python that was removed).
- Not isolated by default: the environment sees the packages of the Python that creates it
  (`--system-site-packages`, and, when that Python is itself in a virtual environment, that
  environment's packages too), so TensorFlow and CUDA libraries already installed are used, not
  downloaded again; pip installs into `.venv` only what is missing or at a version
  `pyproject.toml` does not accept. Commands of inherited packages (`prefect`, `ruff`, ...)
  get launchers in `.venv/bin` that run them with the environment's own interpreter.
  `--isolated` makes an environment that sees nothing outside itself.
- One at a time: a second `make` waits for the first to finish setting up.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import pathlib
import site
import subprocess
import sys
import venv

STAMP = ".diffusion-lib-stamp.json"
INHERITED_PTH = "_inherited_environment.pth"
LAUNCHER_MARK = "# launcher written by scripts/ensure_venv.py"

# Run inside the environment: the console scripts of every distribution it sees, with the
# directory each distribution lives in.
_LIST_SCRIPTS = r"""
import importlib.metadata as md, json, sys
out = []
for dist in md.distributions():
    for ep in dist.entry_points:
        if ep.group == "console_scripts":
            out.append([ep.name, ep.value, str(dist.locate_file(""))])
json.dump(out, sys.stdout)
"""


def say(message: str) -> None:
    print(f"==> {message}", flush=True)


def interpreter(env: pathlib.Path) -> pathlib.Path:
    return env / "bin" / "python"


def runs(python: pathlib.Path) -> bool:
    if not python.exists():
        return False
    probe = subprocess.run(
        [str(python), "-c", "import pip, sys; sys.exit(0)"],
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


def wanted_stamp(project: pathlib.Path, extras: str, isolated: bool) -> dict:
    digest = hashlib.sha256((project / "pyproject.toml").read_bytes()).hexdigest()
    return {
        "pyproject_sha256": digest,
        "extras": extras,
        "project_dir": str(project),
        "isolated": isolated,
    }


def read_stamp(env: pathlib.Path) -> dict | None:
    try:
        return json.loads((env / STAMP).read_text())
    except (OSError, ValueError):
        return None


def write_stamp(env: pathlib.Path, stamp: dict) -> None:
    partial = env / (STAMP + ".partial")
    partial.write_text(json.dumps(stamp, indent=1) + "\n")
    os.replace(partial, env / STAMP)


def purelib(env: pathlib.Path) -> pathlib.Path:
    found = subprocess.run(
        [str(interpreter(env)), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    )
    return pathlib.Path(found.stdout.strip())


def create(env: pathlib.Path, isolated: bool) -> None:
    inside_a_venv = sys.prefix != sys.base_prefix
    if inside_a_venv and pathlib.Path(sys.prefix).resolve() == env.resolve():
        sys.exit(
            f"{env} does not run and is the environment this Python belongs to: deactivate it "
            "(or pass PYTHON=/path/to/python3) and run make again"
        )
    say(f"creating {env} with {sys.executable} (Python {sys.version.split()[0]})")
    venv.EnvBuilder(system_site_packages=not isolated, clear=True, with_pip=True).create(env)
    if not isolated and inside_a_venv:
        # `--system-site-packages` reaches the base installation only; a .pth line appends the
        # creating environment's own site-packages after .venv's, so .venv's packages come first.
        parents = [p for p in site.getsitepackages() if pathlib.Path(p).is_dir()]
        (purelib(env) / INHERITED_PTH).write_text("".join(f"{p}\n" for p in parents))
        say(f"{env} also sees the packages of {sys.prefix}")


def add_launchers(env: pathlib.Path) -> int:
    """Writes `.venv/bin/<name>` for each console script of an inherited distribution, so that
    `prefect`, `ruff` and the like run with .venv's interpreter and see .venv's packages."""
    python = interpreter(env)
    listed = subprocess.run(
        [str(python), "-c", _LIST_SCRIPTS], capture_output=True, text=True, check=True
    )
    bin_dir = env / "bin"
    own = purelib(env).resolve()
    written = 0
    for name, value, location in json.loads(listed.stdout):
        target = bin_dir / name
        if pathlib.Path(location).resolve() == own:
            continue  # pip wrote this one
        if target.exists() and LAUNCHER_MARK not in target.read_text(errors="replace"):
            continue
        module, _, attr = value.partition(":")
        attr = attr.split("[")[0].strip()
        target.write_text(
            f"#!{python}\n{LAUNCHER_MARK}\n"
            "import sys\n"
            f"from {module.strip()} import {attr.split('.')[0]}\n"
            f"sys.exit({attr}())\n"
        )
        target.chmod(0o755)
        written += 1
    return written


def install(env: pathlib.Path, project: pathlib.Path, extras: str, quiet: bool) -> None:
    spec = f".[{extras}]" if extras else "."
    say(
        f'installing the project into {env}: pip install -e "{spec}" (the first time this '
        "downloads TensorFlow and the rest, about 2 GB, unless the creating Python has them)"
    )
    command = [str(interpreter(env)), "-m", "pip", "install", "--disable-pip-version-check"]
    command += ["--quiet"] if quiet else []
    command += ["-e", spec]
    subprocess.run(command, cwd=project, check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", default=".venv", help="where the environment lives")
    parser.add_argument("--extras", default="dev", help="the project's extras to install")
    parser.add_argument("--isolated", action="store_true", help="see no packages from outside")
    parser.add_argument("--verbose", action="store_true", help="show pip's output")
    args = parser.parse_args(argv)

    project = pathlib.Path(__file__).resolve().parent.parent
    env = pathlib.Path(args.venv)
    env = (env if env.is_absolute() else project / env).absolute()
    if not (project / "pyproject.toml").is_file():
        sys.exit(f"no pyproject.toml in {project}")

    with open(project / "pyproject.toml", "rb") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"another make is setting up {env}; waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)

        wanted = wanted_stamp(project, args.extras, args.isolated)
        python = interpreter(env)
        healthy = runs(python)
        stamp = read_stamp(env) if healthy else None
        if healthy and stamp == wanted:
            say(f"reusing {env} (installed from this pyproject.toml; nothing to install)")
            return 0

        if not healthy:
            if env.exists():
                say(f"{env} exists but its interpreter does not run: making it again")
            create(env, args.isolated)
        elif stamp is None:
            say(f"{env} has no record of what was installed in it: installing the project")
        elif stamp.get("isolated") != args.isolated:
            kind = "isolated" if args.isolated else "inheriting"
            say(f"{env} is to be {kind} now: making it again")
            create(env, args.isolated)
        else:
            changed = [key for key in wanted if stamp.get(key) != wanted[key]]
            say(f"{env} is out of date ({', '.join(changed)} changed): installing again")

        install(env, project, args.extras, quiet=not args.verbose)
        launchers = add_launchers(env)
        if launchers:
            say(f"{launchers} commands of inherited packages get launchers in {env / 'bin'}")
        write_stamp(env, wanted)
        say(f"{env} is ready")
    return 0


if __name__ == "__main__":
    sys.exit(main())
