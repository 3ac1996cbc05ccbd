"""Training: a typed config, pluggable objectives, a distributed custom loop, checkpoints.

TrainConfig, config_preset(name, **overrides)
train(config, run_dir, ...) -> TrainResult; Trainer for finer control
(a trained run directory, its weights and paths: diffusion_lib.run.Run)
python -m diffusion_lib.training --config FILE --run-dir DIR   (one worker process)
"""

from diffusion_lib.training.checkpoints import (
    CheckpointMismatch,
    DamagedCheckpoint,
    committed_steps,
)
from diffusion_lib.training.config import (
    ConfigError,
    TrainConfig,
    config_preset,
    config_preset_names,
)
from diffusion_lib.training.engine import (
    Progress,
    Trainer,
    TrainingDiverged,
    TrainResult,
    enable_determinism,
    train,
)
from diffusion_lib.training.strategy import choose_strategy, worker_role

__all__ = [
    "CheckpointMismatch",
    "DamagedCheckpoint",
    "ConfigError",
    "Progress",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingDiverged",
    "choose_strategy",
    "committed_steps",
    "config_preset",
    "config_preset_names",
    "enable_determinism",
    "train",
    "worker_role",
]
