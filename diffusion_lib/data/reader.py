"""Reading prepared shards: validated opening, range reads, and a deterministic batch stream.

The stream's order is a pure function of (seed, epoch), computed from row indices before any
data is read:

- each epoch permutes the row groups of all shards (seeded by (seed, epoch)), cuts the
  permutation into windows of `shuffle_window` row groups, and permutes the rows within each
  window (seeded by (seed, epoch, window)): a shuffle buffer whose contents are known in advance;
- epochs follow each other without a gap, and global batch k is rows [kB, (k+1)B) of that stream.

So `start_step=k` seeks straight to batch k (whole windows before it are skipped unread), and a
resumed run sees exactly the batches an uninterrupted one would. Memory holds one window plus one
batch, whatever the dataset's size.

Several input pipelines (workers) split the work in one of two modes:
- "rows": every pipeline walks the same global stream and keeps its own slice of each global
  batch. The union over pipelines is the one-pipeline batch, so results do not depend on the
  number of workers; each pipeline reads all files.
- "files": pipeline p reads only the shards with index % P == p, as its own stream; less I/O
  per worker, but the order depends on P.
"""

from __future__ import annotations

import collections
import dataclasses
import pathlib
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import pyarrow.parquet as pq
import tensorflow as tf

from diffusion_lib.data.errors import DataError
from diffusion_lib.data.manifest import Manifest, read_manifest
from diffusion_lib.data.shards import decode_extra, decode_values, file_sha256
from diffusion_lib.data.sources.base import Examples
from diffusion_lib.normalizer import Normalizer

VERIFY_MODES = ("none", "size", "checksum")
ORDERS = ("shuffled", "sequential")
SHARDING_MODES = ("rows", "files")
MAX_OPEN_FILES = 16
_FLIP_STREAM = 0x5F11  # a fixed tag separating the flip RNG stream from the order's


@dataclasses.dataclass(frozen=True)
class _RowGroup:
    shard: int
    group: int
    start: int  # global index of its first row
    rows: int


@dataclasses.dataclass(frozen=True)
class _StreamPlan:
    """A validated stream request: what `stream` checked, `_iterate` walks."""

    groups: list
    batch: int
    seed: int
    start_step: int
    order: str
    shuffle_window: int
    num_epochs: int | None
    drop_remainder: bool
    flip: bool
    slice_lo: int
    part: int
    split: int
    global_batch_size: int


class Batch(NamedTuple):
    """One batch. x: uint8 or float32 [b, ...]; label: int64 [b] (-1 without labels);
    index: int64 [b], the examples' stable indices; step: the global batch number."""

    x: np.ndarray | tf.Tensor
    label: np.ndarray | tf.Tensor
    index: np.ndarray | tf.Tensor
    step: np.ndarray | tf.Tensor


class ShardedDataset:
    """A prepared dataset directory, opened and checked against its manifest.

    verify: "size" (default) checks every shard exists with the recorded byte size;
    "checksum" also recomputes sha256 (reads every byte); "none" trusts the manifest.
    """

    def __init__(self, directory: str | pathlib.Path, verify: str = "size"):
        if verify not in VERIFY_MODES:
            raise DataError(f"verify must be one of {VERIFY_MODES}, got {verify!r}")
        self.directory = pathlib.Path(directory)
        self.manifest: Manifest = read_manifest(self.directory)
        for record in self.manifest.shards:
            path = self.directory / record.file
            if not path.is_file():
                raise DataError(f"shard file missing: {path}")
            if verify != "none" and path.stat().st_size != record.bytes:
                raise DataError(
                    f"{path}: {path.stat().st_size} bytes, manifest says {record.bytes}"
                )
            if verify == "checksum" and file_sha256(path) != record.sha256:
                raise DataError(f"{path}: sha256 mismatch with {self.directory / 'manifest.json'}")
        # Open Parquet readers, least recently used first. Bounded: each holds buffers, and a
        # dataset of thousands of shards must not hold thousands of them.
        self._files: collections.OrderedDict[int, pq.ParquetFile] = collections.OrderedDict()
        self._groups = self._index_row_groups()

    # ------------------------------------------------------------------ facts

    @property
    def kind(self) -> str:
        return self.manifest.kind

    @property
    def example_shape(self) -> tuple[int, ...]:
        return tuple(self.manifest.example_shape)

    @property
    def has_labels(self) -> bool:
        return self.manifest.has_labels

    def __len__(self) -> int:
        return self.manifest.num_examples

    def label_range(self) -> tuple[int, int] | None:
        """(smallest, largest) label over the whole dataset, reading only the label column; None
        for a dataset without labels."""
        if not self.has_labels or not len(self):
            return None
        low, high = None, None
        for shard, record in enumerate(self.manifest.shards):
            try:
                column = self._file(shard).read(columns=["label"]).column("label").to_numpy()
            except Exception as err:
                raise DataError(
                    f"{self.directory / record.file}: labels unreadable ({err})"
                ) from None
            if column.size:
                low = int(column.min()) if low is None else min(low, int(column.min()))
                high = int(column.max()) if high is None else max(high, int(column.max()))
        return low, high

    # --------------------------------------------------------------- reading

    def _file(self, shard: int) -> pq.ParquetFile:
        handle = self._files.get(shard)
        if handle is not None:
            self._files.move_to_end(shard)
        else:
            path = self.directory / self.manifest.shards[shard].file
            try:
                handle = pq.ParquetFile(path)
            except Exception as err:  # pyarrow raises ArrowInvalid, OSError, ...
                raise DataError(f"{path}: not a readable Parquet file ({err})") from None
            self._files[shard] = handle
            while len(self._files) > MAX_OPEN_FILES:
                _, oldest = self._files.popitem(last=False)
                oldest.close()
        return handle

    def _index_row_groups(self) -> list[_RowGroup]:
        groups = []
        for shard, record in enumerate(self.manifest.shards):
            metadata = self._file(shard).metadata
            if metadata.num_rows != record.rows:
                raise DataError(
                    f"{self.directory / record.file}: {metadata.num_rows} rows, manifest says {record.rows}"
                )
            start = record.start
            for group in range(metadata.num_row_groups):
                rows = metadata.row_group(group).num_rows
                groups.append(_RowGroup(shard, group, start, rows))
                start += rows
        return groups

    def _read_group(self, group: _RowGroup) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        columns = ["index", "image" if self.kind == "image" else "point"]
        if self.has_labels:
            columns.append("label")
        path = self.directory / self.manifest.shards[group.shard].file
        try:
            table = self._file(group.shard).read_row_group(group.group, columns=columns)
        except Exception as err:
            raise DataError(f"{path}: row group {group.group} unreadable ({err})") from None
        values = decode_values(table, self.kind, self.example_shape)
        index = table.column("index").to_numpy()
        labels = (
            table.column("label").to_numpy()
            if self.has_labels
            else np.full(group.rows, -1, np.int64)
        )
        return values, labels, index

    def read(self, start: int = 0, stop: int | None = None) -> Examples:
        """Examples with indices [start, stop) in index order (for evaluation and inspection)."""
        stop = len(self) if stop is None else stop
        if not 0 <= start <= stop <= len(self):
            raise DataError(f"row range [{start}, {stop}) is outside [0, {len(self)})")
        values, labels = [], []
        for group in self._groups:
            lo, hi = max(start, group.start), min(stop, group.start + group.rows)
            if lo >= hi:
                continue
            v, lab, _ = self._read_group(group)
            values.append(v[lo - group.start : hi - group.start])
            labels.append(lab[lo - group.start : hi - group.start])
        if not values:
            return Examples(
                np.zeros(
                    (0, *self.example_shape), np.uint8 if self.kind == "image" else np.float32
                ),
                None,
            )
        return Examples(np.concatenate(values), np.concatenate(labels) if self.has_labels else None)

    def read_rows(self, indices) -> Examples:
        """Examples at `indices` (ascending, unique), reading only the row groups that hold them:
        memory is one row group plus the result, whatever the dataset's size."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.ndim != 1 or np.any(np.diff(indices) <= 0):
            raise DataError("indices must be a 1-D ascending sequence without repeats")
        if len(indices) and not 0 <= indices[0] <= indices[-1] < len(self):
            raise DataError(f"indices must lie in [0, {len(self)})")
        values, labels = [], []
        for group in self._groups:
            lo, hi = np.searchsorted(indices, [group.start, group.start + group.rows])
            if lo == hi:
                continue
            v, lab, _ = self._read_group(group)
            local = indices[lo:hi] - group.start
            values.append(v[local])
            labels.append(lab[local])
        if not values:
            return self.read(0, 0)
        return Examples(np.concatenate(values), np.concatenate(labels) if self.has_labels else None)

    def read_extra(self, names) -> dict[str, np.ndarray]:
        """The extra columns `names` of every row, in index order (see `Examples.extra`)."""
        out: dict[str, list] = {name: [] for name in names}
        for group in self._groups:
            path = self.directory / self.manifest.shards[group.shard].file
            try:
                table = self._file(group.shard).read_row_group(group.group, columns=list(names))
            except Exception as err:
                raise DataError(f"{path}: columns {list(names)} unreadable ({err})") from None
            for name in names:
                out[name].append(decode_extra(table, name, self.example_shape))
        return {name: np.concatenate(parts) for name, parts in out.items()}

    # ---------------------------------------------------------------- stream

    def _epoch_windows(
        self, groups: list[_RowGroup], seed: int, epoch: int, order: str, window: int
    ):
        """[(window number, row groups)] of one epoch."""
        if order == "sequential":
            return [(0, groups)]
        permutation = np.random.default_rng([seed, epoch]).permutation(len(groups))
        shuffled = [groups[i] for i in permutation]
        return [
            (w, shuffled[i : i + window]) for w, i in enumerate(range(0, len(shuffled), window))
        ]

    def _window_rows(
        self, members: list[_RowGroup], seed: int, epoch: int, number: int, order: str
    ):
        parts = [self._read_group(g) for g in members]
        values = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        index = np.concatenate([p[2] for p in parts])
        if order == "shuffled":
            perm = np.random.default_rng([seed, epoch, number]).permutation(len(index))
            values, labels, index = values[perm], labels[perm], index[perm]
        return values, labels, index

    def stream(
        self,
        global_batch_size: int,
        *,
        seed: int = 0,
        start_step: int = 0,
        order: str = "shuffled",
        shuffle_window: int = 16,
        num_epochs: int | None = None,
        drop_remainder: bool = True,
        flip: bool = False,
        num_pipelines: int = 1,
        pipeline_id: int = 0,
        sharding: str = "rows",
        splits_per_pipeline: int = 1,
    ) -> Iterator[Batch]:
        """Yields this pipeline's part of global batches start_step, start_step + 1, ...

        Each pipeline's part is emitted as `splits_per_pipeline` consecutive equal batches
        (one per local replica, for `distribute_datasets_from_function`). With `flip`, images
        are mirrored left-right with probability 1/2, decided by (seed, step, row).
        """
        for name, value in (
            ("global_batch_size", global_batch_size),
            ("shuffle_window", shuffle_window),
            ("num_pipelines", num_pipelines),
            ("splits_per_pipeline", splits_per_pipeline),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise DataError(f"{name} must be a positive integer, got {value!r}")
        if order not in ORDERS:
            raise DataError(f"order must be one of {ORDERS}, got {order!r}")
        if sharding not in SHARDING_MODES:
            raise DataError(f"sharding must be one of {SHARDING_MODES}, got {sharding!r}")
        if not 0 <= pipeline_id < num_pipelines:
            raise DataError(f"pipeline_id must be in [0, {num_pipelines}), got {pipeline_id}")
        if start_step < 0:
            raise DataError(f"start_step must be >= 0, got {start_step}")
        if flip and self.kind != "image":
            raise DataError("flip applies to images only")
        if global_batch_size % (num_pipelines * splits_per_pipeline):
            raise DataError(
                f"global_batch_size {global_batch_size} is not divisible by "
                f"{num_pipelines} pipelines x {splits_per_pipeline} replicas"
            )

        groups, batch, slice_lo = self._groups, global_batch_size, 0
        if num_pipelines > 1 and sharding == "files":
            if len(self.manifest.shards) < num_pipelines:
                raise DataError(
                    f"sharding='files' needs at least {num_pipelines} shards, the dataset has "
                    f"{len(self.manifest.shards)}; use sharding='rows' or smaller shards"
                )
            groups = [g for g in groups if g.shard % num_pipelines == pipeline_id]
            batch, seed = global_batch_size // num_pipelines, seed * 1_000_003 + pipeline_id
            part = batch
        else:
            part = global_batch_size // num_pipelines
            slice_lo = pipeline_id * part
        epoch_rows = sum(g.rows for g in groups)
        if epoch_rows < batch and num_epochs is None:
            raise DataError(
                f"batch of {batch} is larger than the {epoch_rows} examples this pipeline reads"
            )
        split = part // splits_per_pipeline
        # Everything above ran now, in the caller's frame; the rows flow lazily from here.
        plan = _StreamPlan(
            groups=groups,
            batch=batch,
            seed=seed,
            start_step=start_step,
            order=order,
            shuffle_window=shuffle_window,
            num_epochs=num_epochs,
            drop_remainder=drop_remainder,
            flip=flip,
            slice_lo=slice_lo,
            part=part,
            split=split,
            global_batch_size=global_batch_size,
        )
        return self._iterate(plan)

    def _iterate(self, plan: _StreamPlan) -> Iterator[Batch]:
        epoch_rows = sum(g.rows for g in plan.groups)
        skip = plan.start_step * plan.batch
        epoch, offset = divmod(skip, epoch_rows)
        step = plan.start_step
        carry: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        carried = 0
        while plan.num_epochs is None or epoch < plan.num_epochs:
            for number, members in self._epoch_windows(
                plan.groups, plan.seed, epoch, plan.order, plan.shuffle_window
            ):
                size = sum(g.rows for g in members)
                if offset >= size:  # before the start: skip without reading
                    offset -= size
                    continue
                values, labels, index = self._window_rows(
                    members, plan.seed, epoch, number, plan.order
                )
                if offset:
                    values, labels, index, offset = (
                        values[offset:],
                        labels[offset:],
                        index[offset:],
                        0,
                    )
                carry.append((values, labels, index))
                carried += len(index)
                while carried >= plan.batch:
                    chunk = self._take(carry, plan.batch)
                    carried -= plan.batch
                    yield from self._emit(
                        chunk,
                        step,
                        plan.seed,
                        plan.flip,
                        plan.slice_lo,
                        plan.part,
                        plan.split,
                        plan.global_batch_size,
                    )
                    step += 1
            epoch += 1
        if carried and not plan.drop_remainder:
            chunk = self._take(carry, carried)
            yield from self._emit(
                chunk,
                step,
                plan.seed,
                plan.flip,
                0,
                len(chunk[2]),
                len(chunk[2]),
                plan.global_batch_size,
            )

    @staticmethod
    def _take(carry: list, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pops the first n rows off the carry list."""
        parts, need = [], n
        while need:
            values, labels, index = carry[0]
            if len(index) <= need:
                parts.append(carry.pop(0))
                need -= len(index)
            else:
                parts.append((values[:need], labels[:need], index[:need]))
                carry[0] = (values[need:], labels[need:], index[need:])
                need = 0
        return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))

    @staticmethod
    def _emit(chunk, step, seed, flip, lo, part, split, global_batch_size):
        values, labels, index = chunk
        if flip:
            mask = (
                np.random.default_rng([seed, _FLIP_STREAM, step]).random(global_batch_size)[
                    : len(index)
                ]
                < 0.5
            )
            values = values.copy()
            values[mask] = values[mask][:, :, ::-1]
        for s in range(lo, lo + part, split):
            yield Batch(
                values[s : s + split], labels[s : s + split], index[s : s + split], np.int64(step)
            )

    # ------------------------------------------------------------- tf.data

    def normalizer(self):
        """The map from stored values to model inputs: images to [-1, 1], points standardised
        with the manifest's per-dimension mean and std."""
        return Normalizer.of(self.manifest).to_model_tf()

    def tf_dataset(
        self,
        global_batch_size: int,
        *,
        input_context: tf.distribute.InputContext | None = None,
        normalize: bool = True,
        **stream_options,
    ) -> tf.data.Dataset:
        """The stream as a tf.data.Dataset of `Batch` (x float32 when normalized), prefetched.

        With an `input_context` (inside `distribute_datasets_from_function`) the pipeline count,
        id and per-replica batch size come from it. TensorFlow's auto-sharding is switched off:
        the stream already gives each pipeline its disjoint rows.
        """
        if input_context is not None:
            stream_options.update(
                num_pipelines=input_context.num_input_pipelines,
                pipeline_id=input_context.input_pipeline_id,
                splits_per_pipeline=input_context.num_replicas_in_sync
                // input_context.num_input_pipelines,
            )
        self.stream(
            global_batch_size, **stream_options
        )  # raises on bad options here, not in tf.data
        parts = stream_options.get("num_pipelines", 1) * stream_options.get(
            "splits_per_pipeline", 1
        )
        fixed = stream_options.get("drop_remainder", True)
        size = global_batch_size // parts if fixed else None
        value_dtype = tf.uint8 if self.kind == "image" else tf.float32
        signature = Batch(
            tf.TensorSpec([size, *self.example_shape], value_dtype),
            tf.TensorSpec([size], tf.int64),
            tf.TensorSpec([size], tf.int64),
            tf.TensorSpec([], tf.int64),
        )

        def generate():
            yield from self.stream(global_batch_size, **stream_options)

        dataset = tf.data.Dataset.from_generator(generate, output_signature=signature)
        if normalize:
            normalize_fn = self.normalizer()
            # Not converted by autograph (nothing here branches on a tensor): a converted
            # function's source goes to a temporary file that only a normal exit removes, and
            # training workers are ended by signals.
            dataset = dataset.map(
                tf.autograph.experimental.do_not_convert(
                    lambda b: Batch(normalize_fn(b.x), b.label, b.index, b.step)
                ),
                num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True,
            )
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        options.deterministic = True
        return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)


def open_dataset(directory: str | pathlib.Path, verify: str = "size") -> ShardedDataset:
    return ShardedDataset(directory, verify)
