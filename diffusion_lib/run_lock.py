"""One writer per run directory: an advisory lock (flock) on `<run_dir>/.writer.lock`.

    with writing(run_dir):          # in a flow: every stage, and the training worker it starts
        ...
    env, fds = inheritance(run_dir) # hand the held lock to a child process (subprocess pass_fds)

The lock belongs to an open file, so the kernel drops it when its last holder dies, however it
dies: a lock left by a killed process is no lock (the file still names the old holder, which is
then overwritten). A second process asking for it gets `RunBusy` naming the holder:
"run X is being written by pid N (host) since T".

Within one process the lock is re-entrant (a flow's stages and its tasks' threads share it). A
child process the holder starts (the training worker) gets the same open file through `pass_fds`
and `DIFFUSION_LIB_RUN_LOCK=<fd>:<path>` in its environment, so it holds the lock with its
parent and keeps it if the parent dies first; a worker started alone takes the lock itself.
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

LOCK_NAME = ".writer.lock"
ENV = "DIFFUSION_LIB_RUN_LOCK"

_held: dict[pathlib.Path, list[int]] = {}  # resolved lock path -> [fd, depth]
_guard = threading.Lock()


class RunBusy(RuntimeError):
    """Another process is writing this run directory."""


def _lock_path(run_dir: str | pathlib.Path) -> pathlib.Path:
    return pathlib.Path(run_dir).resolve() / LOCK_NAME


def _inherited(path: pathlib.Path) -> int | None:
    """The fd of `path`'s lock passed down by the parent, if it is that file."""
    value = os.environ.get(ENV, "")
    fd_text, _, named = value.partition(":")
    if not fd_text.isdigit() or pathlib.Path(named) != path:
        return None
    fd = int(fd_text)
    try:
        mine, there = os.fstat(fd), os.stat(path)
    except OSError:
        return None
    return fd if (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino) else None


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


def acquire(run_dir: str | pathlib.Path) -> None:
    """Takes the run's lock for this process (re-entrant); RunBusy if another process has it."""
    path = _lock_path(run_dir)
    with _guard:
        if path in _held:
            _held[path][1] += 1
            return
        fd = _inherited(path)
        if fd is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
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
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(stamp).encode(), 0)
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
            # Close, never LOCK_UN: the open file may be shared with a child (or a parent), and
            # an unlock would release it for them too; the kernel drops the lock when the last
            # descriptor of that file closes.
            if _inherited(path) != entry[0]:
                os.close(entry[0])


@contextlib.contextmanager
def writing(run_dir: str | pathlib.Path) -> Iterator[None]:
    """Holds the run's lock for the block (RunBusy if another process writes the run)."""
    acquire(run_dir)
    try:
        yield
    finally:
        release(run_dir)


def inheritance(run_dir: str | pathlib.Path) -> tuple[dict[str, str], tuple[int, ...]]:
    """(environment, fds) that hand this process's lock on `run_dir` to a child process
    (Popen(env={**env, ...}, pass_fds=fds)); empty if this process does not hold it."""
    path = _lock_path(run_dir)
    with _guard:
        entry = _held.get(path)
    if entry is None:
        return {}, ()
    return {ENV: f"{entry[0]}:{path}"}, (entry[0],)
