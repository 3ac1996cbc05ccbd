"""Checkpoints that are either complete or invisible, pruned to the last N plus every K-th.

Layout in `directory`: `ckpt-<step>.index`, `ckpt-<step>.data-*` (written by
`tf.train.Checkpoint.write`) and `ckpt-<step>.json`, the commit marker, written atomically
after the data. Only steps with a marker exist as far as readers are concerned, so a crash
in mid-write leaves nothing that looks valid, and the previous checkpoint stays the latest.

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

import tensorflow as tf

from diffusion_lib._atomic import atomic_write_bytes

_MARKER = re.compile(r"^ckpt-(\d+)\.json$")


class CheckpointMismatch(ValueError):
    """A checkpoint that does not fit the objects it is restored into (another architecture)."""


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
        atomic_write_bytes(
            self.directory / f"ckpt-{step}.json",
            json.dumps({"step": step, **info}, sort_keys=True).encode(),
        )
        self.prune()
        return prefix

    def prune(self) -> None:
        steps = self.steps()
        keep = set(steps[-self.keep_last :])
        if self.keep_every:
            keep |= {s for s in steps if s % self.keep_every == 0}
        for step in steps:
            if step in keep:
                continue
            (self.directory / f"ckpt-{step}.json").unlink(missing_ok=True)  # uncommit, then delete
            for path in self.directory.glob(f"ckpt-{step}.*"):
                path.unlink(missing_ok=True)
