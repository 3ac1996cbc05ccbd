"""Failures classified once (diffusion_lib.failures): what another attempt cannot pass, the line
a user acts on, and run directories that cannot be written, refused before any work. The disk
cases run on a real 1 MiB tmpfs and a real read-only bind mount where this process may mount
(root), and are skipped elsewhere."""

import errno
import os
import pathlib
import subprocess

import pytest
import tensorflow as tf

from diffusion_lib import failures
from diffusion_lib._atomic import atomic_write_bytes
from diffusion_lib.failures import OutputRootError
from diffusion_lib.run_lock import writing

pytestmark = pytest.mark.cost(2)


@pytest.mark.parametrize(
    ("error", "permanent"),
    [
        (OSError(errno.ENOSPC, "No space left on device", "/runs/r/x"), True),
        (OSError(errno.EROFS, "Read-only file system"), True),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), True),
        (PermissionError(errno.EACCES, "Permission denied"), True),
        (ValueError("rows_per_shard must be positive"), True),
        (ConnectionError("the API went away"), False),
        (OSError(errno.ECONNRESET, "Connection reset by peer"), False),
        (OSError(errno.EIO, "Input/output error"), False),
        # TensorFlow's file system says it only in its message.
        (tf.errors.UnknownError(None, None, "runs/r/ckpt-3.index; No space left on device"), True),
        (RuntimeError("stage 'sample' failed"), False),
    ],
)
def test_what_another_attempt_cannot_pass(error, permanent):
    assert failures.is_permanent(error) == permanent
    wrapped = RuntimeError("a task failed")
    wrapped.__cause__ = error
    assert failures.is_permanent(wrapped) == (permanent and not isinstance(error, ValueError))


def test_the_line_a_user_acts_on_names_the_path_and_what_to_do():
    line = failures.describe(OSError(errno.ENOSPC, "No space left on device", "/runs/r/s.parquet"))
    assert line == (
        "/runs/r/s.parquet: No space left on device "
        "(free space there, or choose another output root)"
    )
    assert failures.describe(KeyError("x")) == "KeyError: 'x'"
    # TensorFlow's own error, as a checkpoint save on a full disk raises it.
    saving = tf.errors.UnknownError(
        None,
        None,
        "{{function_node __wrapped__SaveV2_dtypes_83_device_/job:localhost/replica:0/task:0/"
        "device:CPU:0}} /runs/r/checkpoints/ckpt-30_temp/part-0.data-0.tempstate87; No space "
        "left on device [Op:SaveV2]",
    )
    assert failures.describe(saving) == (
        "/runs/r/checkpoints/ckpt-30_temp/part-0.data-0.tempstate87: No space left on device "
        "(free space there, or choose another output root)"
    )
    named = failures.naming(PermissionError(errno.EACCES, "Permission denied"), "/runs/a")
    assert isinstance(named, PermissionError) and named.filename == "/runs/a"


def test_output_roots_that_cannot_hold_a_run_are_refused_naming_them(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("")
    for root, cause in (
        (a_file, "Not a directory"),
        (pathlib.Path("/proc/runs"), "No such file or directory"),
    ):
        with pytest.raises(
            OutputRootError, match=rf"run directory {root}/r cannot be written: {cause}"
        ):
            with writing(root / "r"):
                pass
    assert a_file.read_text() == ""


def _mount(*arguments) -> None:
    result = subprocess.run(["mount", *arguments], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount here: {result.stderr.strip()}")


@pytest.fixture
def mounted(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    points = []

    def mount(name, *arguments):
        point = tmp_path / name
        point.mkdir()
        _mount(*arguments, str(point))
        points.append(point)
        return point

    yield mount
    for point in reversed(points):
        subprocess.run(["umount", str(point)], check=False)


def test_a_full_disk_names_the_file_and_leaves_no_partial_file(mounted):
    full = mounted("small", "-t", "tmpfs", "-o", "size=1m", "tmpfs")
    target = full / "samples" / "shard-0.parquet"
    with pytest.raises(OSError) as caught:
        atomic_write_bytes(target, b"x" * (2 << 20))
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(target)
    assert failures.is_permanent(caught.value)
    assert not target.exists() and list(target.parent.iterdir()) == []


def test_a_read_only_output_root_is_refused_before_anything_is_written(mounted, tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    read_only = mounted("ro", "-o", "bind,ro", str(source))
    with pytest.raises(
        OutputRootError,
        match=r"cannot be written: Read-only file system .*choose a writable output root",
    ):
        with writing(read_only / "r"):
            pass
    # The command line's check before the flow starts says the same of the root itself.
    with pytest.raises(
        OutputRootError,
        match=rf"output root {read_only}/runs cannot be written: Read-only file system; choose a",
    ):
        failures.check_output_root(read_only / "runs")
    assert list(source.iterdir()) == []
