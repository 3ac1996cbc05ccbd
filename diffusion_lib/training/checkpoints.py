"""Checkpoints that are either complete or invisible, pruned to the last N plus every K-th.

Layout in `directory`: `ckpt-<step>.index`, `ckpt-<step>.data-*` (written by
`tf.train.Checkpoint.write`) and `ckpt-<step>.json`, the commit marker, written atomically
after the data. Only steps with a marker exist as far as readers are concerned, so a crash
in mid-write leaves nothing that looks valid, and the previous checkpoint stays the latest.

The marker also records the SHA-256 of each file the checkpoint wrote. `verify` checks them
before a restore; a checkpoint whose bytes changed since (a flipped bit, a truncated copy) is
`DamagedCheckpoint`, and `CheckpointStore.restore_latest` moves it aside (`damaged/`, kept for
inspection, no longer committed) and falls back to the newest one that verifies and restores.
Markers written before checksums existed are trusted as they are.

Why not `tf.train.CheckpointManager`: it keeps the last N, or one every so many hours, but not
every K-th step, and its state file cannot carry the metadata (step, config fingerprint,
metrics) this marker does. `tf.train.Checkpoint` does the actual writing either way.

On multi-worker runs every worker must take part in `write` (variables are read collectively);
non-chief workers write into a private temporary directory that is deleted at once.
"""

from __future__ import annotations

import json
import pathlib
import re
import shutil
import time
from collections.abc import Callable

import tensorflow as tf

from diffusion_lib._atomic import atomic_write_bytes
from diffusion_lib.data.shards import file_sha256

_MARKER = re.compile(r"^ckpt-(\d+)\.json$")


class CheckpointMismatch(ValueError):
    """A checkpoint that does not fit the objects it is restored into (another architecture)."""


class DamagedCheckpoint(ValueError):
    """A committed checkpoint whose files are missing or differ from what was written."""


DAMAGED_DIR = "damaged"


def checkpoint_files(directory: str | pathlib.Path, step: int) -> list[pathlib.Path]:
    """The files TensorFlow wrote for checkpoint `step` (its index and data shards)."""
    directory = pathlib.Path(directory)
    index = directory / f"ckpt-{step}.index"
    return [index, *sorted(directory.glob(f"ckpt-{step}.data-*"))]


def verify(directory: str | pathlib.Path, step: int) -> None:
    """Raises DamagedCheckpoint unless every file the marker of `step` lists has its checksum."""
    directory = pathlib.Path(directory)
    files = read_marker(directory, step).get("files")
    if files is None:
        return  # written before checksums were recorded
    for name, expected in sorted(files.items()):
        if not name.startswith(f"ckpt-{step}."):
            raise DamagedCheckpoint(f"{directory / f'ckpt-{step}.json'}: lists {name}, not its own")
        path = directory / name
        if not path.is_file():
            raise DamagedCheckpoint(f"{path}: missing")
        if file_sha256(path) != expected:
            raise DamagedCheckpoint(
                f"{path}: its bytes differ from the checksum recorded when it was written"
            )


def committed_steps(directory: str | pathlib.Path) -> list[int]:
    """Steps with a complete checkpoint (marker and index present), ascending."""
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        return []
    steps = []
    for path in directory.iterdir():
        match = _MARKER.match(path.name)
        if match and (directory / f"ckpt-{match.group(1)}.index").is_file():
            steps.append(int(match.group(1)))
    return sorted(steps)


def read_marker(directory: str | pathlib.Path, step: int) -> dict:
    return json.loads((pathlib.Path(directory) / f"ckpt-{step}.json").read_text())


def restore(
    checkpoint: tf.train.Checkpoint,
    directory: str | pathlib.Path,
    step: int,
    *,
    partial: bool = False,
):
    """Reads checkpoint `step` into `checkpoint`'s objects; CheckpointMismatch names what differs."""
    prefix = str(pathlib.Path(directory) / f"ckpt-{step}")
    try:
        status = checkpoint.read(prefix)
        if partial:
            status.expect_partial()
        else:
            status.assert_existing_objects_matched()
    except (
        ValueError,
        AssertionError,
        tf.errors.InvalidArgumentError,
        tf.errors.NotFoundError,
    ) as err:
        first_line = str(err).strip().splitlines()[0][:400]
        raise CheckpointMismatch(f"{prefix}: does not match this model ({first_line})") from None
    return status


class CheckpointStore:
    def __init__(
        self,
        directory: str | pathlib.Path,
        checkpoint: tf.train.Checkpoint,
        *,
        is_chief: bool = True,
        worker_id: int = 0,
        keep_last: int = 3,
        keep_every: int = 0,
    ):
        self.directory = pathlib.Path(directory)
        self.checkpoint = checkpoint
        self.is_chief, self.worker_id = is_chief, worker_id
        self.keep_last, self.keep_every = keep_last, keep_every
        self.directory.mkdir(parents=True, exist_ok=True)

    def steps(self) -> list[int]:
        return committed_steps(self.directory)

    def latest(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def restore(self, step: int) -> None:
        restore(self.checkpoint, self.directory, step)

    def save(self, step: int, info: dict) -> pathlib.Path | None:
        """Writes checkpoint `step`; returns its prefix on the chief, None elsewhere."""
        if not self.is_chief:
            scratch = self.directory.parent / f".worker-{self.worker_id}-scratch"
            try:
                self.checkpoint.write(str(scratch / f"ckpt-{step}"))
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
            return None
        prefix = self.directory / f"ckpt-{step}"
        (self.directory / f"ckpt-{step}.json").unlink(
            missing_ok=True
        )  # re-saving a step: uncommit first
        self.checkpoint.write(str(prefix))
        files = {path.name: file_sha256(path) for path in checkpoint_files(self.directory, step)}
        atomic_write_bytes(
            self.directory / f"ckpt-{step}.json",
            json.dumps({"step": step, **info, "files": files}, sort_keys=True).encode(),
        )
        self.prune(verified=step)  # its checksums were just computed from the files
        return prefix

    def _verifies(self, step: int) -> bool:
        try:
            verify(self.directory, step)
        except (DamagedCheckpoint, OSError, ValueError):
            return False
        return True

    def restore_latest(self, on_damage: Callable[[int, str], None] | None = None) -> int | None:
        """Restores the newest checkpoint that verifies and reads; returns its step (None: no
        checkpoint). Each damaged one on the way is reported to on_damage(step, why) and, on the
        chief, moved aside so it is neither resumed from nor kept in place of a good one.
        CheckpointMismatch (another architecture) is not damage and propagates."""
        for step in reversed(self.steps()):
            try:
                verify(self.directory, step)
                self.restore(step)
                return step
            except (DamagedCheckpoint, tf.errors.DataLossError, tf.errors.OutOfRangeError) as err:
                why = str(err).strip().splitlines()[0][:400]
                if self.is_chief:
                    self.set_aside(step)
                if on_damage is not None:
                    on_damage(step, why)
        return None

    def set_aside(self, step: int) -> pathlib.Path:
        """Uncommits checkpoint `step` and moves its files to damaged/ckpt-<step>-<time>/."""
        target = self.directory / DAMAGED_DIR / f"ckpt-{step}-{time.strftime('%Y%m%dT%H%M%S')}"
        target.mkdir(parents=True, exist_ok=True)
        marker = self.directory / f"ckpt-{step}.json"
        if marker.exists():
            marker.replace(target / marker.name)  # uncommitted from here on
        for path in self.directory.glob(f"ckpt-{step}.*"):
            path.replace(target / path.name)
        return target

    def prune(self, verified: int | None = None) -> None:
        """Removes checkpoints beyond the last `keep_last` and every `keep_every`-th, keeping the
        newest good one; `verified` names one known good without hashing it again."""
        steps = self.steps()
        keep = set(steps[-self.keep_last :])
        if self.keep_every:
            keep |= {s for s in steps if s % self.keep_every == 0}
        # Never prune the last good checkpoint: if none of those kept verifies (their files
        # damaged since they were written), keep the newest one that does.
        if verified not in keep and not any(self._verifies(s) for s in sorted(keep, reverse=True)):
            good = next((s for s in reversed(steps) if s not in keep and self._verifies(s)), None)
            if good is not None:
                keep.add(good)
        for step in steps:
            if step in keep:
                continue
            (self.directory / f"ckpt-{step}.json").unlink(missing_ok=True)  # uncommit, then delete
            for path in self.directory.glob(f"ckpt-{step}.*"):
                path.unlink(missing_ok=True)
