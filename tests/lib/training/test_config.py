"""The training config: validation names the field, identity ignores what may change on resume."""

import json

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
