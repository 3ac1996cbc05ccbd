"""Pipeline presets: every score variant's Langevin step is technique 4's for its own levels."""

import pytest

from diffusion_lib.evaluation import EvalSpec
from diffusion_lib.samplers import technique4_step_lr
from diffusion_lib.schedules import sigma_schedule
from tasks.presets import PRESETS, SCORE_VARIANTS, resolve
from tasks.train import training_config_object


@pytest.mark.parametrize("preset", sorted(SCORE_VARIANTS))
def test_score_variants_step_by_technique_4(preset):
    plan = resolve(preset, "ncsn")
    config = training_config_object(plan["train"], data_dir="unused")
    sigmas = sigma_schedule(config.sigma_max, config.sigma_min, config.num_levels)
    for part in ("eval", "samples"):
        settings = plan[part]
        expected = technique4_step_lr(sigmas, settings["steps_per_level"])
        assert settings["step_lr"] == pytest.approx(expected, rel=0.03), (preset, part)


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("model", ["ddpm", "ncsn"])
def test_every_eval_setting_is_a_valid_spec(preset, model):
    if model == "ncsn" and preset not in SCORE_VARIANTS:
        pytest.skip("no score variant")
    EvalSpec(**resolve(preset, model)["eval"])
