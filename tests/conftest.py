"""Shared test setup: quiet TensorFlow, CPU only, two logical CPU devices; the Prefect server
and the trained runs that tests share.

Two logical devices let MirroredStrategy tests run as they would on a 2-GPU host; they must be
configured before TensorFlow initialises its devices: at import time in a test worker, at
configure time in a run without workers. The controlling process of a run with workers runs no
test and does not load TensorFlow. How the run is scheduled and sped up: tests/runner.py.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

from tests import runner  # noqa: E402  (before TensorFlow: it sets the thread counts)

pytest_plugins = ("tests.runner",)


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


def pytest_configure(config):
    """A run without workers runs its tests in this process: its logical devices now."""
    if hasattr(config, "workerinput") or getattr(config.option, "numprocesses", None):
        return
    # Pytest captures the output while it loads this file, not at configure time: captured
    # again here, so that TensorFlow's device start-up lines (its cuInit error on a machine
    # without a GPU) do not reach the terminal.
    capture = config.pluginmanager.getplugin("capturemanager")
    if capture is None:  # -p no:capture
        _two_logical_cpus()
        return
    capture.resume_global_capture()
    try:
        _two_logical_cpus()
    finally:
        capture.suspend_global_capture()


@pytest.fixture(scope="session", autouse=True)
def _local_ray_cluster_stops_with_the_session():
    """The local Ray cluster a test process started (`diffusion_lib.cluster.connect`) is
    stopped at its end: a pytest-xdist worker ends without the exit handlers that stop it, and
    two of the cluster's agent processes outlived it."""
    yield
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="session")
def prefect_server():
    """A temporary Prefect server (its own database) for every test that runs flows or tasks in
    process: the one the controlling process started for all workers, or, in a run without
    workers, one of this process's own. The server is shared: tests read back only their own
    runs' records."""
    url = os.environ.get(runner.SHARED_SERVER_ENV)
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
        # Private, and needed: temporary_settings reaches this thread's context only, and the
        # threads Prefect starts (the task runner's, the log and event workers) read the global
        # one; prefect_test_harness sets it the same way for the server it starts itself.
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
