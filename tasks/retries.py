"""When a failed task gets another attempt: after what another attempt can get past (a crash, a
killed worker, a full disk, a run another writer held), not after bad input, which fails the
same way every time and would only be delayed by the retries (and their waits) before it is
reported."""

from __future__ import annotations

# What the library raises for bad input (its ConfigError, DataError, CheckpointMismatch,
# SamplerMismatch, MetricInputError are ValueErrors), and a path that is of the wrong kind or
# not ours to write: another attempt with the same inputs meets the same error.
PERMANENT = (
    ValueError,
    TypeError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
)


def is_permanent(error: BaseException) -> bool:
    """True when retrying cannot help: one of PERMANENT, or an error that says so itself (its
    `permanent` attribute: a training worker's exit for bad input or divergence)."""
    return isinstance(error, PERMANENT) or bool(getattr(error, "permanent", False))


def worth_retrying(task, task_run, state) -> bool:
    """Prefect's retry condition for every task here (`retry_condition_fn`)."""
    try:
        state.result()
    except Exception as error:  # noqa: BLE001 - the failed attempt's own error, to classify
        return not is_permanent(error)
    return True
