"""One writer per run directory: an advisory lock (flock) on `<run_dir>/.writer.lock`.

    with writing(run_dir):          # in a flow: every stage, and the training worker it starts
        ...
    env = lent(run_dir)             # lend the held lock to another process (a Ray worker)

The lock belongs to an open file, so the kernel drops it when its last holder dies, however it
dies: a lock left by a killed process is no lock (the file still names the old holder, which is
then overwritten). A second process asking for it gets `RunBusy` naming the holder:
"run X is being written by pid N (host) since T". Taking it is every writer's first write, so a
run directory that cannot be made or written (an output root that is a file, read-only, full,
forbidden, or under /proc) ends there, before any work, as `failures.OutputRootError`.

Within one process the lock is re-entrant (a flow's stages and its tasks' threads share it).
A process the holder has work done by (the chief training worker, a Ray worker that inherits
no open file) gets `DIFFUSION_LIB_RUN_LOCK=lent:<path>` in its environment: while the lock is
held (by the lender) it writes under the lender's lock; if nobody holds it, it takes the lock
itself, as a worker started alone does. The lender's death ends its Ray job's workers too.
flock is advisory and local: on network file systems that do not support it, it protects only
against writers on the same host.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import pathlib
import socket
import threading
from collections.abc import Iterator

from diffusion_lib.failures import OutputRootError

LOCK_NAME = ".writer.lock"
ENV = "DIFFUSION_LIB_RUN_LOCK"
LENT = "lent:"

_held: dict[pathlib.Path, list[int]] = {}  # resolved lock path -> [fd, depth]
_guard = threading.Lock()


class RunBusy(RuntimeError):
    """Another process is writing this run directory."""


def _lock_path(run_dir: str | pathlib.Path) -> pathlib.Path:
    return pathlib.Path(run_dir).resolve() / LOCK_NAME


def _holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 4096).decode() or "{}")
    except (OSError, ValueError):
        info = {}
    return (
        f"pid {info.get('pid', '?')} ({info.get('host', '?')}) since {info.get('since', '?')}"
        if info
        else "another process"
    )


def _lent(path: pathlib.Path) -> bool:
    """Whether a lender has lent this process `path`'s lock (`lent`) and holds it still."""
    value = os.environ.get(ENV, "")
    if not value.startswith(LENT) or pathlib.Path(value[len(LENT) :]) != path:
        return False
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True  # held: by the lender, as far as a local advisory lock can tell
    finally:
        os.close(fd)  # a lock taken by the probe goes with it
    return False


def acquire(run_dir: str | pathlib.Path) -> None:
    """Takes the run's lock for this process (re-entrant); RunBusy if another process has it."""
    path = _lock_path(run_dir)
    with _guard:
        if path in _held:
            _held[path][1] += 1
            return
        if _lent(path):
            _held[path] = [-1, 1]
            return
        try:  # the first write of every writer: an unusable output root ends here, before work
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise OutputRootError.of(path.parent, error) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise RunBusy(
                f"run {path.parent} is being written by {holder}; wait for it to finish "
                "or stop it, or choose another run name"
            ) from None
        stamp = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        }
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(stamp).encode(), 0)
        except OSError as error:
            os.close(fd)
            raise OutputRootError.of(path.parent, error) from None
        _held[path] = [fd, 1]


def release(run_dir: str | pathlib.Path) -> None:
    path = _lock_path(run_dir)
    with _guard:
        entry = _held.get(path)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del _held[path]
            # Close, never LOCK_UN: the kernel drops the lock when the descriptor closes. A lent
            # lock (no descriptor) stays with its lender.
            if entry[0] >= 0:
                os.close(entry[0])


@contextlib.contextmanager
def writing(run_dir: str | pathlib.Path) -> Iterator[None]:
    """Holds the run's lock for the block (RunBusy if another process writes the run)."""
    acquire(run_dir)
    try:
        yield
    finally:
        release(run_dir)


def lent(run_dir: str | pathlib.Path) -> dict[str, str]:
    """The environment that lends this process's lock on `run_dir` to a process it has started
    without handing it an open file (a Ray worker); empty if this process does not hold it."""
    path = _lock_path(run_dir)
    with _guard:
        held = path in _held
    return {ENV: f"{LENT}{path}"} if held else {}
