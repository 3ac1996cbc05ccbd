"""When a failed task gets another attempt: after what another attempt can get past (a crash, a
killed worker, a run another writer held), not after what fails the same way every time (bad
input, a full or read-only disk: `diffusion_lib.failures`), which retries would only delay, nor
after the Prefect API stopped answering: the attempt's work may be done (only its report was
lost), another attempt could not report either, and `flows.api_watch` ends the run."""

from __future__ import annotations

import httpx

from diffusion_lib.failures import is_permanent

__all__ = ["is_permanent", "worth_retrying"]


def worth_retrying(task, task_run, state) -> bool:
    """Prefect's retry condition for every task here (`retry_condition_fn`)."""
    try:
        state.result()
    except Exception as error:  # noqa: BLE001 - the failed attempt's own error, to classify
        return not (is_permanent(error) or isinstance(error, httpx.TransportError))
    return True
