"""The console of a flow started from the command line: TensorFlow's start-up lines filtered out,
everything else (real warnings and errors included) kept.

TensorFlow's start-up notices come from native code straight to file descriptor 2
(diffusion_lib/training/startup_noise.py says which lines they are). `quiet_startup()` captures that descriptor
while TensorFlow loads and initialises its devices, then writes back every line that is not one
of them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence
from typing import TextIO

from diffusion_lib.training.startup_noise import is_noise, noise_patterns


@contextlib.contextmanager
def filtered_stderr(patterns: Sequence[re.Pattern]) -> Iterator[None]:
    """Captures file descriptor 2 for the block, then writes back the lines no pattern matches
    (in order, once the block is done)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines = capture.read().decode(errors="replace").splitlines(keepends=True)
            kept = [line for line in lines if not is_noise(line, patterns)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def quiet_startup() -> None:
    """Loads TensorFlow and initialises its devices with the start-up notices filtered out."""
    if "tensorflow" in sys.modules:
        return  # too late to catch what it printed
    with filtered_stderr(noise_patterns()):
        import tensorflow as tf

        tf.config.list_physical_devices()


def _prefect_console_handlers() -> list[logging.Handler]:
    from prefect.logging.handlers import PrefectConsoleHandler

    found = []
    loggers = [logging.getLogger()] + [
        logging.getLogger(name) for name in list(logging.root.manager.loggerDict)
    ]
    for logger in loggers:
        for handler in getattr(logger, "handlers", ()):
            if isinstance(handler, PrefectConsoleHandler) and handler not in found:
                found.append(handler)
    return found


@contextlib.contextmanager
def progress_bars(stream: TextIO | None = None) -> Iterator[None]:
    """On a terminal, one rich progress bar per long stage (training, evaluation, sampling,
    rendering: whatever reports through `tasks.progress.show_progress`), with elapsed time and
    ETA, drawn below Prefect's log lines; elsewhere (a file, a pipe, CI) nothing is drawn and
    the log lines carry the same figures.

    Prefect's console handlers print through rich too: for the block they share the bars'
    console, so a log line appears above the bars instead of through them."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from tasks.progress import progress_sink

    stream = sys.stderr if stream is None else stream
    if not (hasattr(stream, "isatty") and stream.isatty()):
        yield
        return
    handlers = _prefect_console_handlers()
    saved = [(handler, handler.console) for handler in handlers]
    console = Console(file=stream, force_terminal=True)
    bars = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        redirect_stdout=False,
        redirect_stderr=False,
    )
    stages: dict[str, int] = {}

    def sink(stage: str, completed: float, total: float, description: str) -> None:
        if stage not in stages:
            stages[stage] = bars.add_task(description, total=total)
        bars.update(stages[stage], completed=completed, total=total, description=description)

    for handler in handlers:
        handler.console = console
    try:
        with bars, progress_sink(sink):
            yield
    finally:
        for handler, original in saved:
            handler.console = original
