"""Training: a typed config, pluggable objectives, a distributed custom loop, checkpoints.

TrainConfig, config_preset(name, **overrides)
train(config, run_dir, ...) -> TrainResult; Trainer for finer control
(a trained run directory, its weights and paths: diffusion_lib.run.Run)
python -m diffusion_lib.training --config FILE --run-dir DIR   (one worker process)

The names below are imported on first use (PEP 562), so that `python -m diffusion_lib.training`
runs its own start-up (`__main__`) before TensorFlow is imported.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "CheckpointMismatch": "checkpoints",
    "DamagedCheckpoint": "checkpoints",
    "committed_steps": "checkpoints",
    "ConfigError": "config",
    "TrainConfig": "config",
    "config_preset": "config",
    "config_preset_names": "config",
    "Progress": "engine",
    "Trainer": "engine",
    "TrainingDiverged": "engine",
    "TrainResult": "engine",
    "enable_determinism": "engine",
    "train": "engine",
    "choose_strategy": "strategy",
    "worker_role": "strategy",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
