"""Shared test setup: quiet TensorFlow, CPU only, two logical CPU devices.

Two logical devices let MirroredStrategy tests run as they would on a 2-GPU host; they must be
configured before TensorFlow initialises its devices: at import time in a test worker, at
configure time in a run without workers. The controlling process of a run with workers runs no
test and does not load TensorFlow.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# With several test workers (and the processes their tests start) sharing the cores, each
# TensorFlow process gets its share of them instead of a thread per core in each of its pools:
# measured on 2 cores with two workers (training, network and sampler tests, n = 2 each), 175.1
# and 175.6 s against 193.9 and 209.0 s with TensorFlow's defaults, for the same CPU time.
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _workers > 1:
    _threads = str(max(1, (os.cpu_count() or 1) // _workers))
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", _threads)
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", _threads)

import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

# No test uses scikit-learn, which Keras imports (1.9 s) only for its scikit-learn wrappers; the
# training worker does the same (diffusion_lib/training/__main__.py).
sys.modules.setdefault("sklearn", None)


def _two_logical_cpus() -> None:
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
    )


# A test worker (pytest-xdist names it before it loads this file): here, while pytest captures
# the output, TensorFlow's start-up lines included.
if os.environ.get("PYTEST_XDIST_WORKER"):
    _two_logical_cpus()

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    """The costliest test modules first, longest first: each module is one unit of work for the
    two workers (--dist loadscope in pyproject.toml, which also builds a module's fixtures once),
    and without this order one worker ran the last long module alone for about three minutes
    while the other had finished. A module's cost is its `cost` mark (seconds measured with two
    workers on 2 cores); unmarked modules keep their order after the marked ones."""

    def module(item):
        return item.nodeid.split("::", 1)[0]

    costs: dict[str, float] = {}
    for item in items:
        mark = item.get_closest_marker("cost")
        costs[module(item)] = max(costs.get(module(item), 0.0), mark.args[0] if mark else 0.0)
    first = {name: index for index, name in reversed(list(enumerate(map(module, items))))}
    items.sort(key=lambda item: (-costs[module(item)], first[module(item)]))


# With test workers (pytest-xdist), one temporary Prefect server serves them all: the
# controlling process starts it at configure time, before the workers exist, and stops it after
# they have ended. Its URL reaches the workers under a name of its own, not PREFECT_API_URL, so
# that the processes tests start (the command line, the console checks) still run with no
# server configured, as a user's do. One server instead of one per worker: its start (10-15 s)
# overlaps the workers' own, and the second server's CPU (15-25 s over a run) is not spent.
_SHARED_SERVER_ENV = "DIFFUSION_TESTS_PREFECT_API_URL"
_shared_server: dict = {}


def _die_with_us() -> None:
    """In the server's process before it starts (Linux): SIGTERM when the process that started
    it dies, so a test run killed before its teardown leaves no server behind."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL(None).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG


def pytest_configure(config):
    if hasattr(config, "workerinput"):
        return
    os.environ.pop(_SHARED_SERVER_ENV, None)  # a test run started inside another has its own
    if not getattr(config.option, "numprocesses", None):
        # The tests run in this process. Pytest captures the output while it loads this file,
        # not at configure time: captured again here, so that TensorFlow's device start-up
        # lines (its cuInit error on a machine without a GPU) do not reach the terminal.
        capture = config.pluginmanager.getplugin("capturemanager")
        if capture is None:  # -p no:capture
            _two_logical_cpus()
            return
        capture.resume_global_capture()
        try:
            _two_logical_cpus()
        finally:
            capture.suspend_global_capture()
        return
    # With workers, this process starts them and the shared server and runs no test: without
    # TensorFlow (its import, about 3 s, came before the workers' start; its teardown after
    # their end).
    import tempfile

    import prefect

    from tests.local_servers import free_port

    port = free_port()
    home = tempfile.mkdtemp(prefix="prefect-tests-")
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
    os.environ[_SHARED_SERVER_ENV] = f"http://127.0.0.1:{port}/api"


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    if hasattr(config, "workerinput"):
        # A test worker has sent its last report (pytest-xdist sends "workerfinished" at session
        # finish, before this hook); what would follow is pytest's five full garbage collections
        # of a heap that TensorFlow, Keras and Prefect have filled (to report unraisable
        # exceptions of objects collected only now), then the interpreter's own teardown of it.
        # Measured in default runs, from the last test's end to the controlling process's
        # session finish: 9.7 and 10.2 s before, 0.2 s with this exit.
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


@pytest.fixture(scope="session")
def prefect_server():
    """A temporary Prefect server (its own database) for every test that runs flows or tasks in
    process: the one the controlling process started for all workers, or, in a run without
    workers, one of this process's own. The server is shared: tests read back only their own
    runs' records."""
    url = os.environ.get(_SHARED_SERVER_ENV)
    if not url:
        from prefect.testing.utilities import prefect_test_harness

        with prefect_test_harness(server_startup_timeout=120):
            yield
        return
    import time

    import prefect.context
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tests.local_servers import healthy

    deadline = time.monotonic() + 120
    while not healthy(url):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the shared Prefect server at {url} did not start in 120 s")
        time.sleep(0.2)
    with temporary_settings(updates={PREFECT_API_URL: url}):
        with prefect.context._temporary_global_settings_context(
            prefect.context.get_settings_context()
        ):
            yield
            # What this process still has to send, sent before the server stops.
            APILogWorker.drain_all()
            EventsWorker.drain_all()


@pytest.fixture(scope="session")
def toy_ddpm_run(tmp_path_factory):
    """One trained toy DDPM run for every test that needs one: 4,000 moons (and 1,000 held out
    in data/test), mlp-tiny, 200 steps, checkpoints at 100 and 200. Shared: tests write their
    own outputs elsewhere (an evaluation's eval/ is keyed by its settings)."""
    from diffusion_lib.data import DatasetSpec, prepare_dataset
    from diffusion_lib.training import config_preset, train

    root = tmp_path_factory.mktemp("toy-ddpm-run")
    prepare_dataset(DatasetSpec.create("moons", n=4_000), root / "data" / "train")
    prepare_dataset(DatasetSpec.create("moons", split="test", n=1_000), root / "data" / "test")
    config = config_preset(
        "toy-ddpm",
        data_dir=str(root / "data" / "train"),
        network="mlp-tiny",
        num_steps=200,
        checkpoint_every=100,
        log_every=50,
    )
    train(config, root)
    return root


@pytest.fixture(scope="session")
def mnist_tiny_run(tmp_path_factory):
    """A two-step mnist-ddpm-tiny run (50 timesteps) on the embedded digits (4,500 in data/train,
    500 held out in data/test): an image run whose weights exist, for tests of shapes, plumbing
    and metrics far from their floors, not of quality."""
    from diffusion_lib.data import DatasetSpec, prepare_dataset
    from diffusion_lib.training import config_preset, train

    root = tmp_path_factory.mktemp("mnist-tiny-run")
    prepare_dataset(DatasetSpec.create("mnist_embedded", split="train"), root / "data" / "train")
    prepare_dataset(DatasetSpec.create("mnist_embedded", split="test"), root / "data" / "test")
    config = config_preset(
        "mnist-ddpm-tiny",
        data_dir=str(root / "data" / "train"),
        # One level, no attention: the quickest U-Net to trace; nothing here needs a better one.
        network_overrides=(("channel_mults", (1,)), ("attn_resolutions", ())),
        num_timesteps=50,
        batch_size=8,
        num_steps=2,
        checkpoint_every=2,
        log_every=1,
    )
    train(config, root)
    return root
