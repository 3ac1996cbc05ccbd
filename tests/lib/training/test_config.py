"""The training config: validation names the field, identity ignores what may change on resume."""

import hashlib
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
        ({"objective": "ncsn", "sigma_min": 2.0, "sigma_max": 1.0}, "sigma_min"),
        ({"beta_start": 0.5, "beta_end": 0.1}, "beta_start"),
        ({"var_type": "learned_range"}, "loss_type"),
        ({"precision": "float8"}, "precision"),
        ({"score_output_scaling": "inverse_sigma"}, "score_output_scaling"),
        ({"num_steps": 2.5}, "num_steps"),
        ({"learning_rate": float("nan")}, "learning_rate"),
        ({"grad_clip_norm": float("nan")}, "grad_clip_norm"),
        ({"grad_clip_norm": float("inf")}, "grad_clip_norm"),
        ({"ema_decay": float("nan")}, "ema_decay"),
        ({"objective": "sde", "sigma_max": float("inf")}, "sigma_max"),
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
    with pytest.raises(ConfigError, match=rf"^(\w+\.)?{field}:"):
        TrainConfig.of(**changes)


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


def test_a_run_moves_between_precisions_that_checkpoint_the_same_state():
    """float32, mixed bfloat16 and "auto" keep float32 weights and optimizer state: one identity.
    Mixed float16 adds a loss scale to the optimizer's state: another identity."""
    base = config_preset("toy-ddpm")
    same = [base.replace(precision=p) for p in ("float32", "mixed_bfloat16", "auto")]
    assert {config.fingerprint() for config in same} == {base.fingerprint()}
    scaled = base.replace(precision="mixed_float16")
    assert scaled.fingerprint() != base.fingerprint()
    assert base.differences(scaled) == ["execution.precision"]
    assert base.differences(same[1]) == []

    # A checkpoint marker written when the identity held the precision as given: matched by
    # every precision of its layout, not by the other layout's or another identity's.
    def marker_of(config):
        identity = config.identity()
        identity["execution"]["precision"] = config.execution.precision
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]

    for written in same:
        assert all(config.matches_fingerprint(marker_of(written)) for config in same)
        assert not scaled.matches_fingerprint(marker_of(written))
        assert not base.replace(learning_rate=1e-2).matches_fingerprint(marker_of(written))
    assert scaled.matches_fingerprint(marker_of(scaled))
    assert not base.matches_fingerprint(marker_of(scaled))


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
    config = TrainConfig.of(learning_rate=1e-3, warmup_steps=100, **final, **fields)
    schedule = WarmupSchedule.of(config)
    restored = WarmupSchedule.from_config(schedule.get_config())
    for step, value in {0: 1e-5, 49: 5e-4, 100: 1e-3, **expected}.items():
        assert float(schedule(step)) == pytest.approx(value, rel=1e-5), step
        assert float(restored(step)) == pytest.approx(value, rel=1e-5), step


def test_each_section_validates_itself_and_names_where_it_stands():
    with pytest.raises(ConfigError, match=r"^optim\.batch_size: must be positive, got 0"):
        TrainConfig.of(batch_size=0)
    with pytest.raises(ConfigError, match=r"^model\.sigma_min: must not exceed sigma_max"):
        TrainConfig.of(objective="ncsn", sigma_min=2.0, sigma_max=1.0)
    # A family's setting on another family is refused by name, with the families that have it.
    with pytest.raises(ConfigError, match=r"sigma_min: no such setting for objective 'ddpm' \("):
        TrainConfig.of(sigma_min=0.5)
    with pytest.raises(ConfigError, match=r"optim\.learning_rat: no such setting"):
        TrainConfig.of(**{"optim.learning_rat": 1e-3})


def test_overrides_by_name_by_dotted_path_and_by_family():
    by_name = TrainConfig.of(learning_rate=1e-3, network="mlp-tiny", num_levels=7, objective="ncsn")
    by_path = TrainConfig.of(
        objective="ncsn",
        **{"optim.learning_rate": 1e-3, "network.name": "mlp-tiny", "model.num_levels": 7},
    )
    assert by_name == by_path and by_name.optim.learning_rate == 1e-3
    assert by_name.network.name == "mlp-tiny" and by_name.model.num_levels == 7
    # Another objective starts its own section from its defaults; the common sections stay.
    sde = by_name.replace(objective="sde")
    assert sde.model == type(sde.model)() and sde.optim == by_name.optim


def test_every_objective_has_a_configuration_section_and_the_reverse():
    from diffusion_lib.training.config import FAMILIES
    from diffusion_lib.training.objectives import OBJECTIVES

    assert set(FAMILIES) == set(OBJECTIVES)


def test_a_flat_version_1_record_is_migrated_on_read():
    """The fixture's config.json (written before the configuration had sections) reads as the
    same configuration, and its identity is that of the preset it was made from."""
    record = json.loads((FIXTURE / "config.json").read_text())
    assert "version" not in record["config"]
    migrated = TrainConfig.from_dict(record["config"])
    assert migrated.to_dict()["version"] == 2
    made_from = config_preset(
        "toy-ddpm",
        data_dir="data/train",
        network="mlp-tiny",
        num_steps=20,
        checkpoint_every=10,
        log_every=10,
        batch_size=64,
    )
    assert migrated == made_from
    # Each flat field is where its section keeps it; another family's fields are dropped.
    flat = record["config"]
    assert migrated.optim.learning_rate == flat["learning_rate"]
    assert migrated.model.num_timesteps == flat["num_timesteps"]
    assert "num_levels" in flat and not hasattr(migrated.model, "num_levels")
    assert TrainConfig.from_dict(migrated.to_dict()) == migrated
    with pytest.raises(ConfigError, match="version: 3 is a newer configuration"):
        TrainConfig.from_dict({**migrated.to_dict(), "version": 3})


FIXTURE = __import__("pathlib").Path(__file__).resolve().parents[2] / "fixtures" / "run-v1"
