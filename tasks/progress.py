"""Progress as the Prefect UI shows it: a keyed progress artifact whose description carries an
ETA, from the rate measured since the stage's own first report."""

from __future__ import annotations

import logging
import time

from prefect import get_run_logger
from prefect.exceptions import MissingContextError


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
