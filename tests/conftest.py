"""Shared test setup: quiet TensorFlow, CPU only, two logical CPU devices.

Two logical devices let MirroredStrategy tests run as they would on a 2-GPU host; they must be
configured before TensorFlow initialises its devices, hence here, at import time.
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

import sys  # noqa: E402

# No test uses scikit-learn, which Keras imports (1.9 s) only for its scikit-learn wrappers; the
# training worker does the same (diffusion_lib/training/__main__.py).
sys.modules.setdefault("sklearn", None)

import tensorflow as tf  # noqa: E402

_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    _cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)


import pytest  # noqa: E402

from diffusion_lib.data import DatasetSpec, prepare_dataset  # noqa: E402
from diffusion_lib.training import config_preset, train  # noqa: E402


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


@pytest.fixture(scope="session")
def prefect_server():
    """One temporary Prefect server (its own database) per test process, for every test that runs
    flows or tasks in process: starting one takes 10-15 s."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def toy_ddpm_run(tmp_path_factory):
    """One trained toy DDPM run for every test that needs one: 4,000 moons (and 1,000 held out
    in data/test), mlp-tiny, 200 steps, checkpoints at 100 and 200. Shared: tests write their
    own outputs elsewhere (an evaluation's eval/ is keyed by its settings)."""
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
