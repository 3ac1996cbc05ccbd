"""The training config: validation names the field, identity ignores what may change on resume."""

import json
import math

import pytest

from diffusion_lib.training import ConfigError, TrainConfig, config_preset, config_preset_names


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"learning_rate": -1.0}, "learning_rate"),
        ({"objective": "gan"}, "objective"),
        ({"ema_decay": 1.0}, "ema_decay"),
        ({"sigma_min": 2.0, "sigma_max": 1.0}, "sigma_min"),
        ({"beta_start": 0.5, "beta_end": 0.1}, "beta_start"),
        ({"var_type": "learned_range"}, "loss_type"),
        ({"precision": "float8"}, "precision"),
        ({"score_output_scaling": "inverse_sigma"}, "score_output_scaling"),
        ({"num_steps": 2.5}, "num_steps"),
        ({"learning_rate": float("nan")}, "learning_rate"),
        ({"grad_clip_norm": float("nan")}, "grad_clip_norm"),
        ({"grad_clip_norm": float("inf")}, "grad_clip_norm"),
        ({"ema_decay": float("nan")}, "ema_decay"),
        ({"sigma_max": float("inf")}, "sigma_max"),
        ({"lr_schedule": "step"}, "lr_schedule"),
        ({"lr_schedule": "cosine", "warmup_steps": 100, "decay_steps": 100}, "decay_steps"),
        ({"final_lr_fraction": 1.5}, "final_lr_fraction"),
        ({"lr_schedule": "cooldown", "decay_steps": 100}, "cooldown_steps"),
        (
            {
                "lr_schedule": "cooldown",
                "warmup_steps": 50,
                "decay_steps": 100,
                "cooldown_steps": 60,
            },
            "cooldown_steps",
        ),
        ({"decay_steps": 100, "cooldown_steps": 10}, "cooldown_steps"),
        ({"noise_sampling": "beta"}, "noise_sampling"),
        ({"noise_sampling": "log_normal", "objective": "sde"}, "noise_sampling"),
        ({"noise_sampling": "log_normal", "antithetic": True}, "antithetic"),
        ({"noise_log_std": 0.0}, "noise_log_std"),
        ({"num_classes": -1}, "num_classes"),
        ({"num_classes": 10, "objective": "dsm"}, "num_classes"),
        ({"label_dropout": 1.0}, "label_dropout"),
        ({"label_dropout": -0.1}, "label_dropout"),
    ],
)
def test_impossible_values_name_the_field(changes, field):
    with pytest.raises(ConfigError, match=f"^{field}:"):
        TrainConfig(**changes)


def test_round_trip_and_unknown_fields():
    config = config_preset(
        "mnist-ddpm-tiny", network_overrides={"dropout": 0.1}, devices=["/cpu:0"]
    )
    data = json.loads(json.dumps(config.to_dict()))
    assert TrainConfig.from_dict(data) == config
    assert hash(config) == hash(TrainConfig.from_dict(data))
    with pytest.raises(ConfigError, match=r"unknown config fields \['lr'\]"):
        TrainConfig.from_dict({"lr": 0.1})


def test_identity_ignores_resumable_fields():
    base = config_preset("toy-ddpm")
    assert (
        base.fingerprint()
        == base.replace(num_steps=99, checkpoint_every=7, strategy="mirrored").fingerprint()
    )
    assert base.fingerprint() != base.replace(learning_rate=1e-2).fingerprint()


def test_presets_exist():
    assert {"toy-ddpm", "toy-ncsn", "mnist-ddpm", "mnist-ddpm-tiny", "cifar10-ddpm"} <= set(
        config_preset_names()
    )
    with pytest.raises(ConfigError, match="preset must be one of"):
        config_preset("imagenet-ddpm")


_COSINE_AT_600 = 1e-3 * (0.1 + 0.9 * (1 + math.cos(math.pi / 4)) / 2)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        # cosine: peak * (f + (1 - f) (1 + cos(pi u)) / 2), u the share of (decay_steps - warmup)
        # done; flat at f * peak after decay_steps.
        (
            {"lr_schedule": "cosine", "decay_steps": 2_100},
            {600: _COSINE_AT_600, 1_100: 0.55e-3, 2_100: 1e-4, 9_000: 1e-4},
        ),
        # cooldown (warmup-stable-decay): flat, then peak * (1 - (1 - f) u), u the share of the
        # last cooldown_steps before decay_steps done; flat at f * peak after.
        (
            {"lr_schedule": "cooldown", "decay_steps": 2_000, "cooldown_steps": 400},
            {1_600: 1e-3, 1_700: 1e-3 * (1 - 0.9 * 0.25), 1_800: 0.55e-3, 2_000: 1e-4, 9_000: 1e-4},
        ),
        ({}, {5_000: 1e-3}),  # constant
    ],
)
def test_learning_rate_schedules_by_their_formulas(fields, expected):
    """Each schedule warms up linearly to the peak over 100 steps, then follows its formula
    (final fraction f = 0.1); its config round-trips."""
    from diffusion_lib.training.engine import WarmupSchedule

    final = {"final_lr_fraction": 0.1} if fields else {}
    config = TrainConfig(learning_rate=1e-3, warmup_steps=100, **final, **fields)
    schedule = WarmupSchedule.of(config)
    restored = WarmupSchedule.from_config(schedule.get_config())
    for step, value in {0: 1e-5, 49: 5e-4, 100: 1e-3, **expected}.items():
        assert float(schedule(step)) == pytest.approx(value, rel=1e-5), step
        assert float(restored(step)) == pytest.approx(value, rel=1e-5), step
