"""One training worker's life, whoever starts it: `python -m diffusion_lib.training` (a process
of its own) and the Ray Train workers of `launch` both call `run_worker`.

    run_worker(make_config, run_dir, emit=fn, should_stop=fn) -> exit status

It reports through `emit(event, **fields)`, the worker protocol's events ("start",
"progress", "warning", "error" and "done"), and returns the protocol's status: 0 finished (or
stopped on request, a checkpoint written first), BAD_INPUT, DIVERGED, DISK (a full, read-only
or forbidden file system: `diffusion_lib.failures`), or 1 for anything else.
An "error" event carries the status as `code` and, for a crash, the traceback's last lines.
"""

from __future__ import annotations

import dataclasses
import traceback
from collections.abc import Callable

from diffusion_lib import failures
from diffusion_lib.training.worker_protocol import BAD_INPUT, DISK, DIVERGED

Emit = Callable[..., None]
TAIL_LINES = 40


def _crash(emit: Emit, err: BaseException) -> int:
    """An unexpected exception: its class, message and traceback's last lines as the error;
    a disk error (`failures.disk_error`) as DISK, naming its path and what to do."""
    disk = failures.disk_error(err)
    if disk is not None:
        emit("error", kind=type(disk).__name__, message=failures.describe(disk), code=DISK)
        return DISK
    lines = traceback.format_exception(err)
    tail = "".join(lines).splitlines()[-TAIL_LINES:]
    print("\n".join(tail), flush=True)
    emit("error", kind=type(err).__name__, message=str(err).strip()[:2000], code=1, tail=tail)
    return 1


def build_trainer(make_config: Callable, run_dir: str, emit: Emit, deterministic: bool = False):
    """(config, strategy, trainer), or the exit status of bad input (its error event sent)."""
    # Imported here so a CLI's `--help` is instant; the strategy is created before any other TF
    # work, as MultiWorkerMirroredStrategy requires.
    from diffusion_lib.data import DataError
    from diffusion_lib.training.checkpoints import CheckpointMismatch
    from diffusion_lib.training.config import ConfigError
    from diffusion_lib.training.engine import Trainer, enable_determinism
    from diffusion_lib.training.strategy import choose_strategy

    try:
        config = make_config()
        if deterministic or config.execution.deterministic:
            enable_determinism()
        strategy = choose_strategy(config.execution.strategy, config.execution.devices)
        trainer = Trainer(
            config, run_dir, strategy=strategy, warn=lambda m: emit("warning", message=m)
        )
    except (
        ConfigError,
        DataError,
        CheckpointMismatch,
        FileNotFoundError,
        ValueError,
        TypeError,
    ) as err:
        emit("error", kind=type(err).__name__, message=str(err), code=BAD_INPUT)
        return BAD_INPUT
    except Exception as err:
        return _crash(emit, err)
    return config, strategy, trainer


def run_worker(
    make_config: Callable,
    run_dir: str,
    *,
    emit: Emit,
    should_stop: Callable[[], bool] = lambda: False,
    max_steps: int | None = None,
    deterministic: bool = False,
) -> int:
    """Trains the TrainConfig `make_config()` returns in `run_dir` (resuming from its latest
    checkpoint), reporting through `emit`; returns the exit status (module docstring)."""
    built = build_trainer(make_config, run_dir, emit, deterministic)
    if isinstance(built, int):
        return built
    config, strategy, trainer = built
    from diffusion_lib.networks.config import compute_precision
    from diffusion_lib.training.engine import TrainingDiverged

    # Where this worker starts: 0, or the checkpoint it restored (every worker of a cluster must
    # say the same step, which the launcher checks).
    emit(
        "start",
        step=int(trainer.step.numpy()),
        total=config.run.num_steps,
        replicas=strategy.num_replicas_in_sync,
        precision=compute_precision(config.execution.precision),
    )
    try:
        result = trainer.run(
            progress=lambda p: emit("progress", **dataclasses.asdict(p)),
            should_stop=should_stop,
            max_steps=max_steps,
        )
    except TrainingDiverged as err:
        emit("error", kind="TrainingDiverged", message=str(err), code=DIVERGED)
        return DIVERGED
    except Exception as err:
        return _crash(emit, err)
    emit("done", **dataclasses.asdict(result))
    return 0
