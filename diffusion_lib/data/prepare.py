"""Sources into validated Parquet shards: plan, prepare one shard, finalize the manifest.

`prepare_dataset(spec, directory)` does all three. A flow that fans out calls `plan_dataset`,
then `prepare_shard` once per shard index (independently, in any order, on any worker), then
`finalize_dataset`. Every step is idempotent:

- a shard file that exists, belongs to this spec and reads back is kept; with a manifest, its
  sha256 must also match, else it is rebuilt (alone);
- the manifest is written last, atomically; preparing a complete dataset again writes nothing;
- a directory holding another dataset (manifest or shards with another fingerprint) is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import pathlib
from typing import Any

from diffusion_lib.data.errors import DataError, NewerSchemaError
from diffusion_lib.data.manifest import (
    MANIFEST_NAME,
    Manifest,
    ShardRecord,
    read_manifest,
    write_manifest,
)
from diffusion_lib.data.shards import (
    FORMAT_VERSION,
    ShardHeader,
    ShardStats,
    file_sha256,
    read_header,
    shard_name,
    write_shard,
)
from diffusion_lib.data.sources import open_source
from diffusion_lib.data.sources.base import Source, as_image_array, as_points_array

# Options that change how or where from data is fetched, not what it is: left out of the
# fingerprint. A sample set's run directory is where its checkpoint lives (spelled relative or
# absolute, moved or copied); its `checkpoint` option, the checkpoint's content digest, is what.
NON_IDENTITY_OPTIONS = frozenset({"download", "run_dir"})


def _freeze(value: Any) -> Any:
    """Lists -> tuples, recursively, so a spec is hashable (Prefect caches on input hashes)."""
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What to prepare: a source by name, its split and options, and the shard layout.

    Build with `DatasetSpec.create("mnist_embedded", split="train")` or
    `DatasetSpec.create("swiss_roll", n=100_000, seed=1)`; `limit` keeps the first rows only.

    `count_option` names an option that only sets how many rows there are (row i is the same
    whatever its value: a sample set's `n`). It is left out of the fingerprint, shards are
    named by index alone, and a larger count extends the dataset in place: the shards it
    already has that stay whole are kept, only the last, partial one and the new ones are
    written.
    """

    source: str
    split: str = "train"
    options: tuple[tuple[str, Any], ...] = ()
    limit: int | None = None
    rows_per_shard: int = 10_000
    row_group_size: int = 1_000
    count_option: str | None = None

    def __post_init__(self):
        for name in ("rows_per_shard", "row_group_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise DataError(f"{name} must be a positive integer, got {value!r}")
        if self.limit is not None and (
            isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit <= 0
        ):
            raise DataError(f"limit must be a positive integer or None, got {self.limit!r}")
        object.__setattr__(
            self, "options", tuple(sorted((k, _freeze(v)) for k, v in dict(self.options).items()))
        )
        if self.count_option is not None and self.count_option not in dict(self.options):
            raise DataError(
                f"count_option {self.count_option!r} is not one of the options {sorted(dict(self.options))}"
            )

    @classmethod
    def create(
        cls,
        source: str,
        split: str = "train",
        *,
        limit: int | None = None,
        rows_per_shard: int = 10_000,
        row_group_size: int = 1_000,
        count_option: str | None = None,
        **options: Any,
    ) -> DatasetSpec:
        return cls(
            source,
            split,
            tuple(options.items()),
            limit,
            rows_per_shard,
            row_group_size,
            count_option,
        )

    def options_dict(self) -> dict[str, Any]:
        return {k: _thaw(v) for k, v in self.options}

    def to_dict(self) -> dict[str, Any]:
        data = {
            "source": self.source,
            "split": self.split,
            "options": self.options_dict(),
            "limit": self.limit,
            "rows_per_shard": self.rows_per_shard,
            "row_group_size": self.row_group_size,
        }
        if self.count_option is not None:  # absent otherwise: older manifests stay the same
            data["count_option"] = self.count_option
        return data

    def shard_file(self, index: int, num_shards: int) -> str:
        """Shard `index`'s file name: by index alone when a larger count only adds shards."""
        return shard_name(index, None if self.count_option else num_shards)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetSpec:
        data = dict(data)
        data["options"] = tuple(data.get("options", {}).items())
        return cls(**data)

    def fingerprint(self) -> str:
        identity = self.to_dict()
        left_out = NON_IDENTITY_OPTIONS | {self.count_option}
        identity["options"] = {k: v for k, v in identity["options"].items() if k not in left_out}
        identity["format_version"] = FORMAT_VERSION
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]


@dataclasses.dataclass(frozen=True)
class DatasetPlan:
    num_examples: int
    num_shards: int
    kind: str
    example_shape: tuple[int, ...]
    has_labels: bool


def _source(spec: DatasetSpec) -> Source:
    return open_source(spec.source, spec.split, spec.options_dict())


def _plan(spec: DatasetSpec, source: Source) -> DatasetPlan:
    n = len(source) if spec.limit is None else min(len(source), spec.limit)
    return DatasetPlan(
        n,
        math.ceil(n / spec.rows_per_shard),
        source.kind,
        tuple(source.example_shape),
        source.has_labels,
    )


def _source_metadata(source: Source) -> dict:
    """What a source wants recorded in every shard and the manifest (sample sets: checkpoint,
    sampler, seed); most sources record nothing."""
    metadata = getattr(source, "metadata", None)
    return dict(metadata()) if callable(metadata) else {}


def plan_dataset(spec: DatasetSpec) -> DatasetPlan:
    """How many examples and shards `spec` makes (opens the source, reads no rows)."""
    return _plan(spec, _source(spec))


def _existing_manifest(directory: pathlib.Path, spec: DatasetSpec) -> Manifest | None:
    """The directory's manifest if it is this spec's; raises if it belongs to another dataset."""
    if not (directory / MANIFEST_NAME).exists():
        return None
    try:
        manifest = read_manifest(directory)
    except NewerSchemaError:
        raise
    except DataError:
        return None  # an unreadable manifest is rebuilt, never trusted
    if manifest.fingerprint != spec.fingerprint():
        raise DataError(
            f"{directory} holds a different dataset ({manifest.spec.get('source')}/{manifest.spec.get('split')}, "
            f"fingerprint {manifest.fingerprint}); choose another directory"
        )
    return manifest


def _check_no_foreign_shards(directory: pathlib.Path, spec: DatasetSpec) -> None:
    for path in sorted(directory.glob("shard-*.parquet")):
        try:
            header = read_header(path)
        except DataError:
            continue  # unreadable: it will be rebuilt if it is ours, it cannot be read if not
        if header.fingerprint != spec.fingerprint():
            raise DataError(
                f"{directory} holds shards of a different dataset ({path.name}); choose another directory"
            )


def _expected_sha(manifest: Manifest | None, name: str, start: int, stop: int) -> str | None:
    """The sha256 a manifest records for shard `name` holding rows [start, stop), if it records
    one (a dataset extended since has another last shard under the same name)."""
    if manifest is None:
        return None
    return next(
        (
            s.sha256
            for s in manifest.shards
            if (s.file, s.start, s.rows) == (name, start, stop - start)
        ),
        None,
    )


def _checked_shard(
    path: pathlib.Path,
    spec: DatasetSpec,
    index: int,
    start: int,
    stop: int,
    expected_sha: str | None,
) -> tuple[ShardHeader, str] | None:
    """(header, sha256) of a shard file that belongs here and matches `expected_sha` if given;
    None if it is missing, unreadable, foreign or corrupt. Hashes the file once."""
    if not path.is_file():
        return None
    try:
        header = read_header(path)
    except DataError:
        return None
    identity = (header.fingerprint, header.shard_index, header.start, header.stop)
    if identity != (spec.fingerprint(), index, start, stop):
        return None
    digest = file_sha256(path)
    if expected_sha is not None and digest != expected_sha:
        return None
    return header, digest


def prepare_shard(
    spec: DatasetSpec, directory: str | pathlib.Path, shard_index: int
) -> ShardRecord:
    """Writes shard `shard_index` of `spec` into `directory` unless a good copy is already there."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    manifest = _existing_manifest(directory, spec)
    _check_no_foreign_shards(directory, spec)
    source = _source(spec)
    plan = _plan(spec, source)
    if not 0 <= shard_index < plan.num_shards:
        raise DataError(f"shard_index must be in [0, {plan.num_shards}), got {shard_index}")
    start = shard_index * spec.rows_per_shard
    stop = min(start + spec.rows_per_shard, plan.num_examples)
    path = directory / spec.shard_file(shard_index, plan.num_shards)
    checked = _checked_shard(
        path, spec, shard_index, start, stop, _expected_sha(manifest, path.name, start, stop)
    )
    if checked is None:
        examples = source.read(start, stop)
        what = f"{spec.source}/{spec.split} rows [{start}, {stop})"
        if source.kind == "image":
            values = as_image_array(examples.values, what)
        else:
            values = as_points_array(examples.values, what)
        if tuple(values.shape[1:]) != plan.example_shape:
            raise DataError(
                f"{what}: examples of shape {values.shape[1:]}, expected {plan.example_shape}"
            )
        examples = dataclasses.replace(examples, values=values)
        header = ShardHeader(
            kind=plan.kind,
            example_shape=plan.example_shape,
            fingerprint=spec.fingerprint(),
            shard_index=shard_index,
            num_shards=None if spec.count_option else plan.num_shards,
            start=start,
            stop=stop,
            has_labels=plan.has_labels,
            stats=ShardStats.of(values),
            extra=_source_metadata(source),
        )
        write_shard(path, examples, header, spec.row_group_size)
        checked = (header, file_sha256(path))
    return ShardRecord(path.name, start, stop - start, path.stat().st_size, checked[1])


def finalize_dataset(spec: DatasetSpec, directory: str | pathlib.Path) -> Manifest:
    """Checks every shard of `spec` is in place and writes the manifest (last, atomically).

    Call it once all `prepare_shard` calls have returned: it removes leftover temporary files.

    Raises DataError naming the first missing or foreign shard; a complete, matching manifest
    is returned as is, without rewriting.
    """
    directory = pathlib.Path(directory)
    source = _source(spec)
    plan = _plan(spec, source)
    existing = _existing_manifest(directory, spec)
    records, stats = [], []
    for index in range(plan.num_shards):
        path = directory / spec.shard_file(index, plan.num_shards)
        start = index * spec.rows_per_shard
        stop = min(start + spec.rows_per_shard, plan.num_examples)
        # A shard the manifest already vouches for must still match it.
        expected = _expected_sha(existing, path.name, start, stop)
        checked = _checked_shard(path, spec, index, start, stop, expected)
        if checked is None:
            raise DataError(
                f"{path}: missing, corrupt or not a shard of this dataset; run prepare_shard({index}) first"
            )
        stats.append(checked[0].stats)
        records.append(ShardRecord(path.name, start, stop - start, path.stat().st_size, checked[1]))
    # Temporary files of writers killed mid-shard (SIGKILL leaves them): every shard is in place
    # now, so no live writer can own one.
    for stale in directory.glob(".shard-*.tmp"):
        stale.unlink(missing_ok=True)
    if existing is not None and existing.shards == tuple(records):
        return existing
    manifest = Manifest(
        fingerprint=spec.fingerprint(),
        spec=spec.to_dict(),
        kind=plan.kind,
        example_shape=plan.example_shape,
        dtype="uint8" if plan.kind == "image" else "float32",
        has_labels=plan.has_labels,
        num_examples=plan.num_examples,
        shards=tuple(records),
        stats=ShardStats.merge(stats),
        extra=_source_metadata(source),
    )
    return write_manifest(directory, manifest)


def _same_count(manifest: Manifest, spec: DatasetSpec) -> bool:
    """Whether a manifest of `spec`'s fingerprint is of its count too (the fingerprint leaves a
    count option out: the same rows, more or fewer of them)."""
    if spec.count_option is None:
        return True
    recorded = manifest.spec.get("options", {}).get(spec.count_option)
    return recorded == spec.options_dict()[spec.count_option]


def prepare_dataset(spec: DatasetSpec, directory: str | pathlib.Path) -> Manifest:
    """Plan, every shard, manifest. Re-running on a complete dataset is a no-op (checksums
    are verified); missing or corrupt shards are rebuilt alone."""
    directory = pathlib.Path(directory)
    manifest = _existing_manifest(directory, spec)
    if (
        manifest is not None
        and _same_count(manifest, spec)
        and all(
            (directory / s.file).is_file() and file_sha256(directory / s.file) == s.sha256
            for s in manifest.shards
        )
    ):
        return manifest
    plan = plan_dataset(spec)
    for index in range(plan.num_shards):
        prepare_shard(spec, directory, index)
    return finalize_dataset(spec, directory)
