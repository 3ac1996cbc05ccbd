"""Which failures a task retries: what another attempt can get past, not bad input or a full
disk. Real tasks under a real (temporary) Prefect server, with the project's retry condition."""

import importlib
import pkgutil

import httpx
import pytest
from prefect import Task, flow, task

import tasks
from diffusion_lib.training.launch import TrainingFailed
from tasks.retries import is_permanent, worth_retrying


@pytest.mark.parametrize(
    ("error", "attempts"),
    [
        (FileExistsError("runs/r/data/train: File exists"), 1),
        (ValueError("rows_per_shard must be positive"), 1),
        (TrainingFailed("bad config", exit_code=2), 1),
        (TrainingFailed("diverged", exit_code=3), 1),
        (TrainingFailed("killed", exit_code=-9), 3),
        (OSError(28, "No space left on device"), 1),
        (TrainingFailed("disk full", exit_code=4), 1),
        (ConnectionError("connection reset"), 3),
        (httpx.ConnectError("All connection attempts failed"), 1),
    ],
    ids=[
        "file-exists",
        "value",
        "exit-2",
        "exit-3",
        "killed",
        "disk-full",
        "exit-4",
        "lost-worker",
        "lost-api",
    ],
)
def test_bad_input_fails_at_once_and_what_may_pass_is_retried(prefect_server, error, attempts):
    calls = []

    @task(retries=2, retry_delay_seconds=0, retry_condition_fn=worth_retrying)
    def fails():
        calls.append(1)
        raise error

    @flow
    def one():
        return fails(return_state=True)

    state = one(return_state=True)
    assert state.is_failed() and len(calls) == attempts
    assert is_permanent(error) == (attempts == 1 and not isinstance(error, httpx.HTTPError))


def test_every_retried_task_classifies_its_failures():
    """A task with retries and without the condition would retry bad input with its waits
    (the prepare-dataset stage waited 3 x 5 s before reporting a file where a directory
    belongs)."""
    found = []
    for info in pkgutil.iter_modules(tasks.__path__):
        module = importlib.import_module(f"tasks.{info.name}")
        for name, value in vars(module).items():
            if isinstance(value, Task) and value.retries:
                found.append(name)
                assert value.retry_condition_fn is worth_retrying, name
    assert {
        "prepare_shards",
        "train_model",
        "score_checkpoint",
        "sample_shards",
        "render_outputs",
    } <= set(found)
