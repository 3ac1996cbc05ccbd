"""How the default test run fits in 5 minutes on 2 cores (benchmarks/default_test_run.py
measures it): two pytest-xdist workers, `--dist loadscope`, and these tunings.

- Thread counts: each TensorFlow process gets its share of the cores instead of a thread per
  core in each of its pools; two processes with a full set each spend the same CPU time
  slower, contending for the cores.
- scikit-learn is kept out: no test uses it, and Keras imports it (about 2 s a process) only
  for its scikit-learn wrappers, as the training worker does (diffusion_lib/training/__main__.py).
- Scheduling: the costliest test modules first, longest first, by their `cost` marks, so both
  workers finish together instead of one running the last long module alone.
- One Prefect server for both workers, started by the controlling process before they exist:
  its start overlaps theirs, and a second server's CPU is not spent.
- A worker ends with os._exit once it has sent its last report, skipping pytest's full garbage
  collections of a heap TensorFlow, Keras and Prefect have filled, and the interpreter's
  teardown.

tests/conftest.py imports this module before anything imports TensorFlow and registers it as a
plugin; the `prefect_server` fixture there reads the shared server's address from it.
"""

import os
import shutil
import subprocess
import sys

import pytest

_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _workers > 1:
    _threads = str(max(1, (os.cpu_count() or 1) // _workers))
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", _threads)
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", _threads)

sys.modules.setdefault("sklearn", None)


def pytest_collection_modifyitems(config, items):
    """The costliest test modules first, longest first: each module is one unit of work for the
    two workers (--dist loadscope in pyproject.toml, which also builds a module's fixtures
    once). A module's cost is its `cost` mark (seconds measured with two workers on 2 cores);
    unmarked modules keep their order after the marked ones."""

    def module(item):
        return item.nodeid.split("::", 1)[0]

    costs: dict[str, float] = {}
    for item in items:
        mark = item.get_closest_marker("cost")
        costs[module(item)] = max(costs.get(module(item), 0.0), mark.args[0] if mark else 0.0)
    first = {name: index for index, name in reversed(list(enumerate(map(module, items))))}
    items.sort(key=lambda item: (-costs[module(item)], first[module(item)]))


# The shared server's URL reaches the workers under a name of its own, not PREFECT_API_URL, so
# that the processes tests start (the command line, the console checks) still run with no
# server configured, as a user's do.
SHARED_SERVER_ENV = "DIFFUSION_TESTS_PREFECT_API_URL"
_shared_server: dict = {}


def _die_with_us() -> None:
    """In the server's process before it starts (Linux): SIGTERM when the process that started
    it dies, so a test run killed before its teardown leaves no server behind."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL(None).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG


def pytest_configure(config):
    """In the controlling process of a run with workers (which runs no test and does not load
    TensorFlow): the shared Prefect server, started before the workers."""
    if hasattr(config, "workerinput"):
        return
    os.environ.pop(SHARED_SERVER_ENV, None)  # a test run started inside another has its own
    if not getattr(config.option, "numprocesses", None):
        return
    import tempfile

    import prefect

    from tests.local_servers import free_port

    port = free_port()
    home = tempfile.mkdtemp(prefix="prefect-tests-")
    # What `prefect server start` would do, without its CLI's start-up: the API app under
    # uvicorn, with a database and settings of its own.
    env = {
        **os.environ,
        "PREFECT_HOME": home,
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home}/prefect.db",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
    }
    env.pop("PREFECT_API_URL", None)
    command = [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent)]
    command += ["--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--log-level", "error", "--lifespan", "on"]
    _shared_server["process"] = subprocess.Popen(command, env=env, preexec_fn=_die_with_us)
    _shared_server["home"] = home
    os.environ[SHARED_SERVER_ENV] = f"http://127.0.0.1:{port}/api"


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """A worker: exit at once, its last report sent (pytest-xdist sends "workerfinished" when
    its tests are done, before this hook). The controlling process: stop the shared server."""
    if hasattr(config, "workerinput"):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    process = _shared_server.pop("process", None)
    if process is None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    shutil.rmtree(_shared_server.pop("home"), ignore_errors=True)
