"""`manifest.json`: the one file that makes a directory of shards a dataset.

Written last, atomically, after every shard is in place. A reader refuses a directory without
one. It records the schema version, what was prepared (the spec and its fingerprint), the
example shape and dtype, each shard's row count, byte size and sha256, pixel statistics, the
creation time and the library version that wrote it. `extra` carries producer-specific facts
(sample sets put the checkpoint, sampler and seed there).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import pathlib

from diffusion_lib import __version__
from diffusion_lib._atomic import atomic_write_bytes
from diffusion_lib.data.errors import DataError, NewerSchemaError

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"


@dataclasses.dataclass(frozen=True)
class ShardRecord:
    file: str
    start: int
    rows: int
    bytes: int
    sha256: str


@dataclasses.dataclass(frozen=True)
class Manifest:
    fingerprint: str
    spec: dict
    kind: str
    example_shape: tuple[int, ...]
    dtype: str
    has_labels: bool
    num_examples: int
    shards: tuple[ShardRecord, ...]
    stats: dict
    extra: dict = dataclasses.field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    created_at: str = ""
    code_version: str = __version__

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True).encode()


def write_manifest(directory: pathlib.Path, manifest: Manifest) -> Manifest:
    if not manifest.created_at:
        stamp = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        manifest = dataclasses.replace(manifest, created_at=stamp)
    atomic_write_bytes(directory / MANIFEST_NAME, manifest.to_json())
    return manifest


def read_manifest(directory: str | pathlib.Path) -> Manifest:
    """Parses and checks `directory/manifest.json`; DataError naming the file on any problem."""
    path = pathlib.Path(directory) / MANIFEST_NAME
    if not path.is_file():
        raise DataError(
            f"{directory}: no {MANIFEST_NAME}; not a complete dataset (was preparation interrupted?)"
        )
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: malformed JSON ({err})") from None
    version = data.get("schema_version")
    if not isinstance(version, int):
        raise DataError(f"{path}: no schema_version")
    if version > SCHEMA_VERSION:
        raise NewerSchemaError(
            f"{path}: schema version {version} is newer than this library reads ({SCHEMA_VERSION}); upgrade diffusion_lib"
        )
    try:
        data["shards"] = tuple(ShardRecord(**s) for s in data["shards"])
        data["example_shape"] = tuple(data["example_shape"])
        manifest = Manifest(**data)
    except (KeyError, TypeError) as err:
        raise DataError(f"{path}: malformed manifest ({err})") from None
    if sum(s.rows for s in manifest.shards) != manifest.num_examples:
        raise DataError(
            f"{path}: shard row counts do not add up to num_examples={manifest.num_examples}"
        )
    return manifest
