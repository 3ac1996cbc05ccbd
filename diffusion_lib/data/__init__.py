"""Data: sources (a registry), Parquet shards with a manifest, and a deterministic reader.

sources     name -> factory(split, **options): toy 2-D generators, mnist_embedded, tfds,
            idx, image_folder, npz
prepare     DatasetSpec; plan_dataset / prepare_shard / finalize_dataset; prepare_dataset
reader      open_dataset -> ShardedDataset: .read(start, stop), .stream(...), .tf_dataset(...)
"""

from diffusion_lib.data.errors import DataError
from diffusion_lib.data.manifest import Manifest, ShardRecord, read_manifest
from diffusion_lib.data.prepare import (
    DatasetPlan,
    DatasetSpec,
    finalize_dataset,
    plan_dataset,
    prepare_dataset,
    prepare_shard,
)
from diffusion_lib.data.reader import Batch, ShardedDataset, open_dataset
from diffusion_lib.data.sources import SOURCES, Examples, open_source, register_source

__all__ = [
    "SOURCES",
    "Batch",
    "DataError",
    "DatasetPlan",
    "DatasetSpec",
    "Examples",
    "Manifest",
    "ShardRecord",
    "ShardedDataset",
    "finalize_dataset",
    "open_dataset",
    "open_source",
    "plan_dataset",
    "prepare_dataset",
    "prepare_shard",
    "read_manifest",
    "register_source",
]
