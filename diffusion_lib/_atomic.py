"""Write-to-a-temporary-name-then-rename, so a crash never leaves a file that looks complete."""

from __future__ import annotations

import contextlib
import os
import pathlib
import uuid
from collections.abc import Iterator

from diffusion_lib import failures


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[pathlib.Path]:
    """Yields a temporary sibling of `path`; on success fsyncs it and renames it over `path`.

    The temporary name starts with '.' and ends with '.tmp', so listings that look for complete
    files never see it; on failure it is removed.
    """
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as error:
        # A write deep in a library ("No space left on device") names no file: name this one.
        if error.filename in (None, str(tmp)):
            raise failures.naming(error, path) from error
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _fsync_dir(directory: pathlib.Path) -> None:
    """Makes the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
