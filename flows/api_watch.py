"""The orchestration API, watched beside a long flow.

A flow run reports every state, log line and artifact to the Prefect API. When the API goes
away (its server killed, its host gone), nothing the run does can be recorded any more, and
Prefect's client retries each call with growing waits: a job whose server died during training
took over 7 minutes to fail, retrying a finished stage on the way. `watching_api` probes the
API's health endpoint every PROBE_SECONDS beside the flow; after LOST_SECONDS without an
answer it prints one line naming the API and how to resume, and ends the process with status 1.
Work finished before (data, checkpoints, scores, sample shards) is on disk and is not redone
on resume; work in flight resumes from its last checkpoint. `train-and-sample` watches beside
its stages; a stage flow run on its own (`python -m flows.train`) watches beside itself.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator

PROBE_SECONDS = 5.0
LOST_SECONDS = 30.0
EXIT_STATUS = 1


def api_url() -> str | None:
    """The API this flow run reports to (the temporary server's, when Prefect started one),
    or None outside a flow run."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    client = getattr(context, "client", None)
    url = getattr(client, "api_url", None)
    return str(url).rstrip("/") if url else None


def answers(url: str, timeout: float = PROBE_SECONDS) -> bool:
    """Whether the API at `url` answers its health check within `timeout` seconds. Any HTTP
    answer counts (a hosted API may answer the path with an error status, and an API that
    answers is reachable); no connection, or none within `timeout`, does not."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def _end(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
    _stop_ray()
    # Not an exception: the main thread is inside the client's retries, and unwinding through
    # Prefect's engine would try to report the failure to the API that is gone. The workers
    # this process started die with it (their parent-death signal, Ray's fate sharing).
    os._exit(EXIT_STATUS)


def _stop_ray(timeout: float = 10.0) -> None:
    """Disconnects from Ray, stopping the local cluster this process started (its agents
    outlived the process by about a minute otherwise); waits at most `timeout` seconds."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return
    stopping = threading.Thread(target=ray.shutdown, name="ray-shutdown", daemon=True)
    stopping.start()
    stopping.join(timeout)


@contextlib.contextmanager
def watching_api(
    describe: Callable[[str, float], str],
    *,
    url: str | None = None,
    probe_seconds: float = PROBE_SECONDS,
    lost_seconds: float = LOST_SECONDS,
    on_lost: Callable[[str], None] = _end,
) -> Iterator[None]:
    """Watches the API at `url` (default: this flow run's) for the block. When it has not
    answered for `lost_seconds`, calls `on_lost(describe(url, seconds_without_answer))`, by
    default: print the line and end the process (module docstring)."""
    url = url or api_url()
    if url is None:
        yield
        return
    stop = threading.Event()

    def watch() -> None:
        last_answer = time.monotonic()
        while not stop.wait(probe_seconds):
            if answers(url, timeout=probe_seconds):
                last_answer = time.monotonic()
            elif time.monotonic() - last_answer >= lost_seconds and not stop.is_set():
                on_lost(describe(url, time.monotonic() - last_answer))
                return

    thread = threading.Thread(target=watch, name="prefect-api-watch", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()


def lost_line(flow_name: str, url: str, quiet: float, run_name: str, resume: str) -> str:
    """The one line a flow ends with when it has lost the API."""
    return (
        f"{flow_name}: lost the Prefect API at {url} (no answer for {quiet:.0f} s); the "
        f"finished work of run {run_name!r} is kept and not redone. Once the API is back, "
        f"resume: {resume}"
    )


@contextlib.contextmanager
def watching_stage(flow_obj, prog: str, parameters: dict) -> Iterator[None]:
    """`watching_api` for a stage flow run on its own, ending with the command line `prog` and
    the run's `parameters` (`flows.cli.not_defaults`); as a subflow, its parent watches."""
    from prefect.context import FlowRunContext

    from flows.cli import command_line, not_defaults

    context = FlowRunContext.get()
    if context is None or context.flow_run.parent_task_run_id is not None:
        yield
        return
    resume = command_line(prog, not_defaults(flow_obj, parameters))
    with watching_api(
        lambda url, quiet: lost_line(flow_obj.name, url, quiet, parameters["run_name"], resume)
    ):
        yield
