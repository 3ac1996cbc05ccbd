"""Pipeline presets: what each named job prepares, trains, evaluates and samples.

Plain data (no TensorFlow), shared by the tasks and the flows. A preset is a base plus a few
overrides; the flow's flat parameters override it further.
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "train_data": {
            "source": "swiss_roll",
            "split": "train",
            "options": {"n": 2_000},
            "rows_per_shard": 1_000,
        },
        "test_data": {
            "source": "swiss_roll",
            "split": "test",
            "options": {"n": 1_000},
            "rows_per_shard": 1_000,
        },
        "train": {
            "preset": "toy-ddpm",
            "network": "mlp-tiny",
            "num_steps": 60,
            "checkpoint_every": 30,
            "log_every": 10,
            "batch_size": 128,
        },
        "eval": {"n": 300, "sampler": "ddim", "sampler_steps": 10},
        "samples": {
            "n": 600,
            "sampler": "ddim",
            "num_steps": 10,
            "rows_per_shard": 300,
            "chunk_rows": 300,
        },
    },
    "swiss-roll": {
        "train_data": {"source": "swiss_roll", "split": "train", "options": {"n": 50_000}},
        "test_data": {"source": "swiss_roll", "split": "test", "options": {"n": 5_000}},
        "train": {
            "preset": "toy-ddpm",
            "num_steps": 5_000,
            "checkpoint_every": 1_000,
            "log_every": 100,
        },
        "eval": {"n": 2_000, "sampler": "ddpm"},
        "samples": {"n": 10_000, "sampler": "ddpm", "rows_per_shard": 5_000},
    },
    "mnist-cpu": {
        "train_data": {"source": "mnist_embedded", "split": "train", "options": {}},
        "test_data": {"source": "mnist_embedded", "split": "test", "options": {}},
        "train": {
            "preset": "mnist-ddpm",
            "network": "unet-tiny",
            "batch_size": 64,
            "num_steps": 1_500,
            "checkpoint_every": 500,
            "log_every": 50,
            "warmup_steps": 100,
            "learning_rate": 1e-3,
        },
        "eval": {"n": 400, "sampler": "ddim", "sampler_steps": 20, "bpd_examples": 0},
        "samples": {"n": 256, "sampler": "ddim", "num_steps": 50, "rows_per_shard": 256},
    },
}


def resolve(preset: str, **overrides) -> dict[str, Any]:
    """The preset with the flow's flat overrides applied (None means: keep the preset's)."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    plan = {k: dict(v) for k, v in PRESETS[preset].items()}
    if overrides.get("steps") is not None:
        plan["train"]["num_steps"] = overrides["steps"]
        plan["train"]["checkpoint_every"] = min(
            plan["train"]["checkpoint_every"], overrides["steps"]
        )
    if overrides.get("batch_size") is not None:
        plan["train"]["batch_size"] = overrides["batch_size"]
    if overrides.get("num_samples") is not None:
        plan["samples"]["n"] = overrides["num_samples"]
    if overrides.get("sampler") is not None:
        plan["samples"]["sampler"] = overrides["sampler"]
    return plan
