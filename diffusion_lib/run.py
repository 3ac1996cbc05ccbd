"""`Run`: one run directory as one object, the only place that reads its config, restores its
weights and names its paths.

    run = Run("runs/mnist-cpu-x")
    run.config, run.network_config, run.objective       # from config.json (read once)
    run.steps(), run.checkpoint(step=None)               # committed checkpoints; None = latest
    run.restore(step=None, strategy=None, precision=None) -> Restored  # EMA weights, loaded once
    run.dataset, run.normalizer                          # the training set (opened once) and
                                                         # the map to model units and back
    run.checkpoints_dir, run.eval_dir, run.samples_dir, run.render_dir, run.data_dir("train")

Layout of a run directory: config.json (written by the training engine), checkpoints/,
metrics.jsonl, tensorboard/, data/{train,test}/, eval/metrics.json, samples/, render/.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import pathlib

import keras
import tensorflow as tf

from diffusion_lib.data import DataError, open_dataset
from diffusion_lib.data.shards import file_sha256
from diffusion_lib.networks import NetworkConfig, build_network
from diffusion_lib.networks.config import compute_precision
from diffusion_lib.normalizer import Normalizer
from diffusion_lib.training.checkpoints import (
    checkpoint_files,
    committed_steps,
    read_marker,
    restore,
    verify,
)
from diffusion_lib.training.config import ConfigError, TrainConfig
from diffusion_lib.training.engine import (
    CHECKPOINTS_DIR,
    CONFIG_NAME,
    TENSORBOARD_DIR,
    TRAINING_LOG,
    EmaWeights,
)
from diffusion_lib.training.objectives import build_objective

EVAL_DIR, METRICS_NAME = "eval", "metrics.json"  # written by evaluation (evaluate_checkpoints)


@dataclasses.dataclass(frozen=True)
class Restored:
    """A trained network with its EMA weights loaded, and what sampling from it needs."""

    model: keras.Model
    objective: object  # has .family ("diffusion": .diffusion; "score": .sigmas)
    config: TrainConfig
    step: int
    normalizer: Normalizer
    example_shape: tuple[int, ...]
    # What these weights and this objective are: (run directory, step, the checkpoint's commit
    # marker's mtime and size); a checkpoint written again under the same step gets another.
    # Empty: unknown (set it so when replacing the objective or the model).
    identity: tuple = ()


class Run:
    def __init__(self, path: str | pathlib.Path):
        self.path = pathlib.Path(path)
        self._restored: dict[tuple[int, int], Restored] = {}

    @classmethod
    def at(cls, output_root: str | pathlib.Path, run_name: str) -> Run:
        """The run `run_name` under `output_root`: everything one run writes lives there."""
        return cls(pathlib.Path(output_root) / run_name)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    # ------------------------------------------------------------------ paths

    @property
    def config_path(self) -> pathlib.Path:
        return self.path / CONFIG_NAME

    @property
    def checkpoints_dir(self) -> pathlib.Path:
        return self.path / CHECKPOINTS_DIR

    @property
    def eval_dir(self) -> pathlib.Path:
        return self.path / EVAL_DIR

    @property
    def metrics_path(self) -> pathlib.Path:
        return self.eval_dir / METRICS_NAME

    @property
    def samples_dir(self) -> pathlib.Path:
        return self.path / "samples"

    @property
    def render_dir(self) -> pathlib.Path:
        return self.path / "render"

    @property
    def training_log(self) -> pathlib.Path:
        return self.path / TRAINING_LOG

    @property
    def tensorboard_dir(self) -> pathlib.Path:
        return self.path / TENSORBOARD_DIR

    def data_dir(self, split: str) -> pathlib.Path:
        return self.path / "data" / split

    # ------------------------------------------------------------------ what was trained

    @functools.cached_property
    def record(self) -> dict:
        """config.json as written by the training engine."""
        if not self.config_path.is_file():
            raise FileNotFoundError(
                f"{self.path}: no {CONFIG_NAME}; is this a run directory that has trained?"
            )
        try:
            record = json.loads(self.config_path.read_text())
            TrainConfig.from_dict(record["config"])
        except (ValueError, KeyError, TypeError) as error:  # JSONDecodeError among them
            raise ConfigError(
                f"{self.config_path} cannot be read ({type(error).__name__}: {error}); training "
                "this run again with its own parameters rebuilds it (the train stage resumes)"
            ) from None
        return record

    @functools.cached_property
    def config(self) -> TrainConfig:
        """The run's TrainConfig, its data_dir resolved against the run directory (config.json
        records one inside the run relative to it)."""
        config = TrainConfig.from_dict(self.record["config"])
        resolved = self.path / config.data.data_dir
        if not resolved.exists() and pathlib.Path(config.data.data_dir).exists():
            # A run written before data_dir was recorded relative to the run (relative to the
            # working directory then); `dataset` checks it still holds what the run trained on.
            resolved = pathlib.Path(config.data.data_dir)
        return config.replace(data_dir=str(resolved))

    @functools.cached_property
    def network_config(self) -> NetworkConfig:
        return NetworkConfig(**self.record["network"])

    @property
    def example_shape(self) -> tuple[int, ...]:
        return tuple(self.network_config.data_shape)

    @functools.cached_property
    def objective(self):
        """The objective the run trained (its family, diffusion or noise levels); no weights."""
        return build_objective(self.config)

    @functools.cached_property
    def dataset(self):
        """The training set (opened once, not re-verified); DataError if the directory now holds
        another dataset than the run trained on."""
        dataset = open_dataset(self.config.data.data_dir, verify="none")
        trained_on = self.record.get("dataset_fingerprint")
        if trained_on and dataset.manifest.fingerprint != trained_on:
            raise DataError(
                f"{self.config.data.data_dir} holds another dataset than {self.path} trained on "
                f"(fingerprint {dataset.manifest.fingerprint}, trained on {trained_on})"
            )
        return dataset

    @functools.cached_property
    def normalizer(self) -> Normalizer:
        return Normalizer.of(self.dataset.manifest)

    # ------------------------------------------------------------------ checkpoints

    def steps(self) -> list[int]:
        """Steps with a committed checkpoint, ascending (read afresh at each call)."""
        return committed_steps(self.checkpoints_dir)

    def checkpoint(self, step: int | None = None) -> int:
        """`step` if it has a committed checkpoint (None: the latest); FileNotFoundError if not."""
        steps = self.steps()
        if not steps:
            raise FileNotFoundError(f"{self.path}: no complete checkpoint")
        if step is None:
            return steps[-1]
        if step not in steps:
            raise FileNotFoundError(
                f"{self.path}: no complete checkpoint for step {step}; have {steps}"
            )
        return step

    def checkpoint_digest(self, step: int) -> str:
        """The content identity of checkpoint `step`: a digest of its files' SHA-256 as its
        marker records them (of the files themselves for markers older than checksums)."""
        files = read_marker(self.checkpoints_dir, step).get("files")
        if files is None:
            files = {p.name: file_sha256(p) for p in checkpoint_files(self.checkpoints_dir, step)}
        return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:32]

    def restore(
        self,
        step: int | None = None,
        *,
        strategy: tf.distribute.Strategy | None = None,
        precision: str | None = None,
    ) -> Restored:
        """The network with the EMA weights of checkpoint `step` (default: latest), built under
        `strategy` if given (mirrored weights, so a sampler can run on every replica), computing
        in `precision` if given instead of the run's (the weights are float32 under every
        policy; likelihoods ask for "float32"). Loaded once per (step, strategy, precision).
        Raises FileNotFoundError without that checkpoint, DamagedCheckpoint if its files changed
        since they were written (training again repairs it) and CheckpointMismatch if it does
        not fit the network config.json describes."""
        step = self.checkpoint(step)
        network = self.network_config
        if precision is not None:
            network = dataclasses.replace(network, precision=precision)
        key = (step, id(strategy), compute_precision(network.precision))
        if key not in self._restored:
            with (strategy or tf.distribute.get_strategy()).scope():
                model = build_network(network)
                ema = EmaWeights(model.trainable_variables)
            checkpoint = tf.train.Checkpoint(model=model, ema=ema)
            verify(self.checkpoints_dir, step)  # DamagedCheckpoint names the file
            restore(checkpoint, self.checkpoints_dir, step, partial=True)
            for weight, average in zip(model.trainable_variables, ema.averages, strict=True):
                weight.assign(average)
            marker = (self.checkpoints_dir / f"ckpt-{step}.json").stat()
            identity = (str(self.path.resolve()), step, marker.st_mtime_ns, marker.st_size)
            self._restored[key] = Restored(
                model,
                self.objective,
                self.config,
                step,
                self.normalizer,
                self.example_shape,
                identity,
            )
        return self._restored[key]
