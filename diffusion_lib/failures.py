"""What a failure means for another attempt, decided in one place for the library, its training
workers and the pipeline's tasks.

Another attempt can pass what came from the moment: a lost connection, a killed worker, a crash.
It cannot pass what the inputs or the machine decide until someone acts: bad input (the
library's ConfigError, DataError, CheckpointMismatch, SamplerMismatch and MetricInputError are
ValueErrors), a path of the wrong kind, and the disk errors below, a full disk among them. Those
fail the same way every time, so they are reported at once, naming the file or path and what to
do, instead of after retries and their waits.
"""

from __future__ import annotations

import errno
import os
import re

# Errors of the inputs: the same inputs meet them again.
PERMANENT_TYPES = (
    ValueError,
    TypeError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
)
# Operating-system errors that last until someone frees space or changes the path's mount or
# permissions, with what to do about each.
DISK_ERRORS = {
    errno.ENOSPC: "free space there, or choose another output root",
    errno.EDQUOT: "free space within the quota, or choose another output root",
    errno.EFBIG: "raise this process's file-size limit (ulimit -f)",
    errno.EROFS: "choose a writable output root, or mount it read-write",
    errno.EACCES: "change its permissions, or choose another output root",
    errno.EPERM: "change its permissions, or choose another output root",
}


class OutputRootError(ValueError):
    """A run directory that cannot be made or written under its output root (a file, a
    read-only or full file system, no permission, a path under /proc): rejected before any work
    starts."""

    @classmethod
    def of(cls, run_dir: os.PathLike | str, error: OSError) -> OutputRootError:
        cause = error.strerror or str(error)
        where = f" ({error.filename})" if error.filename else ""
        advice = DISK_ERRORS.get(error.errno, "choose another output root or run name")
        return cls(
            f"run directory {os.fspath(run_dir)} cannot be written: {cause}{where}; {advice}"
        )


_STRERRORS = {os.strerror(number): number for number in DISK_ERRORS}


def disk_error(error: BaseException | None) -> OSError | None:
    """The disk error (DISK_ERRORS) behind `error`: itself, one among its causes, or one that a
    library reported only in its message (TensorFlow's file system raises errors of its own with
    "No space left on device" in the text); None if there is none."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in DISK_ERRORS:
            return error
        text = " ".join(str(error).split())
        for strerror, number in _STRERRORS.items():
            if strerror in text:
                # "... /runs/r/checkpoints/ckpt-9_temp/part-0.data; No space left on device"
                path = re.search(r"(/[^\s;,{}()'\"]+)[;:,]?\s*" + re.escape(strerror), text)
                return OSError(number, strerror, path.group(1) if path else None)
        error = error.__cause__ or error.__context__
    return None


def is_permanent(error: BaseException) -> bool:
    """True when another attempt with the same inputs cannot pass: one of PERMANENT_TYPES, a
    disk error (`disk_error`), or an error that says so itself (its `permanent` attribute, e.g.
    a training worker's exit for bad input)."""
    if isinstance(error, PERMANENT_TYPES) or getattr(error, "permanent", False):
        return True
    return disk_error(error) is not None


def describe(error: BaseException) -> str:
    """One line a user can act on: for a disk error, the path, the cause and what to do."""
    disk = disk_error(error)
    if disk is not None:
        where = f"{disk.filename}: " if disk.filename else ""
        cause = disk.strerror or os.strerror(disk.errno)
        return f"{where}{cause} ({DISK_ERRORS[disk.errno]})"
    return f"{type(error).__name__}: {error}"


def naming(error: OSError, path: str | os.PathLike) -> OSError:
    """A copy of `error` that names `path` as its file (a write() deep in a library says only
    "No space left on device"), for `raise ... from error`. OSError picks the subclass of the
    error number (PermissionError for EACCES), so the copy classifies as the original."""
    if error.errno is None:
        return OSError(f"{os.fspath(path)}: {error}")
    return OSError(error.errno, error.strerror or os.strerror(error.errno), os.fspath(path))


def check_output_root(root: str | os.PathLike) -> None:
    """OutputRootError, naming `root` and why, if no run directory can be made under it (a
    file, a read-only or full file system, no permission, a path under /proc): the check makes
    and removes one empty directory in the deepest part of `root` that exists."""
    path = os.path.abspath(os.path.expanduser(os.fspath(root)))
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        where = "is" if existing == path else f"lies under {existing}, which is"
        raise OutputRootError(f"output root {path} {where} not a directory")
    probe = os.path.join(existing, f".write-check-{os.getpid()}")
    try:
        os.mkdir(probe)
        os.rmdir(probe)
    except OSError as error:
        advice = DISK_ERRORS.get(error.errno, "choose another output root")
        raise OutputRootError(
            f"output root {path} cannot be written: {error.strerror or error}; {advice}"
        ) from None
