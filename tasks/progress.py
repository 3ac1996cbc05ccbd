"""Progress as the Prefect UI shows it: a keyed progress artifact whose description carries an
ETA, from the rate measured since the stage's own first report."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.exceptions import MissingContextError
from prefect.futures import as_completed

# (stage, completed, total, description): the console's progress display, when the command line
# opened one (flows.console.progress_bars); tasks report to it whether or not anyone listens.
ProgressSink = Callable[[str, float, float, str], None]
_sinks: list[ProgressSink] = []
_sinks_lock = threading.Lock()


def show_progress(stage: str, completed: float, total: float, description: str = "") -> None:
    """Where `stage` stands (`completed` of `total` units), for the console's progress bars."""
    with _sinks_lock:
        sinks = list(_sinks)
    for sink in sinks:
        sink(stage, completed, total, description or stage)


@contextlib.contextmanager
def progress_sink(sink: ProgressSink) -> Iterator[None]:
    """`sink` receives every `show_progress` call made in this process while the block runs."""
    with _sinks_lock:
        _sinks.append(sink)
    try:
        yield
    finally:
        with _sinks_lock:
            _sinks.remove(sink)


def run_logger(name: str) -> logging.Logger | logging.LoggerAdapter:
    """The Prefect run's logger (shown in the UI), or the logger `name` when a task is called
    through .fn(), outside a run."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(name)


def duration_text(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class Eta:
    """Remaining time of `total` units, from the rate since the first `update` (which sets the
    origin: start-up time is not work done at the working rate)."""

    def __init__(self, total: int, clock=time.monotonic):
        self.total, self.clock = total, clock
        self.origin: tuple[float, int] | None = None

    def update(self, done: int) -> str:
        """ "ETA 3 min 05 s" (or "ETA -" until a rate exists) after `done` units."""
        now = self.clock()
        if self.origin is None:
            self.origin = (now, done)
            return "ETA -" if done < self.total else "done"
        if done >= self.total:
            return "done"
        start, first = self.origin
        if done <= first or now <= start:
            return "ETA -"
        rate = (done - first) / (now - start)
        return f"ETA {duration_text((self.total - done) / rate)}"


def follow_shards(futures, count: int, *, stage: str, key: str, what: str) -> list:
    """Waits for `count` mapped shard tasks, keeping the progress artifact `key` ("what:
    done/count, ETA") and the console's bar of `stage` current as each finishes; returns their
    results in order."""
    progress = create_progress_artifact(0.0, key=key, description=f"{what}: 0/{count}")
    remaining = Eta(count)
    remaining.update(0)
    show_progress(stage, 0, count, what)
    for done, _ in enumerate(as_completed(futures), start=1):
        eta = remaining.update(done)
        show_progress(stage, done, count, what)
        update_progress_artifact(
            progress, 100.0 * done / count, description=f"{what}: {done}/{count}, {eta}"
        )
    return futures.result()
