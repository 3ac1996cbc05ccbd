"""Pipeline presets: every part builds and fits its model; every score variant's Langevin step is
technique 4's for its own levels; the flows' choices come from the registries."""

import typing

import pytest

from diffusion_lib.draw import check_compatible
from diffusion_lib.samplers import SAMPLERS, SamplerSpec, technique4_step_lr
from diffusion_lib.schedules import sigma_schedule
from diffusion_lib.training.objectives import build_objective
from flows.params import Model, Preset, Sampler
from tasks.presets import (
    MODELS,
    PRESETS,
    SAMPLERS_OF,
    SCORE_VARIANTS,
    eval_spec,
    resolve,
    sample_set_options,
)
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
@pytest.mark.parametrize("model", MODELS)
def test_every_preset_resolves_to_a_training_config_and_samplers_that_fit_it(preset, model):
    """Each part of each preset (and score variant) builds: the training config, the evaluation
    spec and the sample set's options, and both samplers serve the family of the objective the
    training config builds."""
    if model == "ncsn" and preset not in SCORE_VARIANTS:
        pytest.skip("no score variant")
    plan = resolve(preset, model)
    config = training_config_object(plan["train"], data_dir="unused")
    assert config.objective == model
    objective = build_objective(config)
    check_compatible(eval_spec(plan["eval"]).sampler, objective)
    check_compatible(sample_set_options(plan["samples"])["sampler"], objective)


def test_flow_choices_come_from_the_registries():
    assert set(typing.get_args(Preset)) == set(PRESETS)
    assert set(typing.get_args(Model)) == set(MODELS)
    assert set(typing.get_args(Sampler)) == set(SAMPLERS)
    assert {k: set(v) for k, v in SAMPLERS_OF.items()} == {
        "ddpm": {"ddpm", "ddim"},
        "ncsn": {"langevin", "annealed_langevin"},
    }


def test_unknown_settings_are_refused_by_name():
    with pytest.raises(ValueError, match=r"eval settings: unknown \['sampler_steps'\]"):
        eval_spec({"sampler": "ddim", "sampler_steps": 10})
    with pytest.raises(ValueError, match="sampler 'ddim' has no setting|unknown"):
        sample_set_options({"sampler": "ddim", "n": 4, "steps": 3})
    # A part may carry another sampler's settings: the chosen sampler takes only its own.
    spec = sample_set_options({"sampler": "ddpm", "n": 4, "num_steps": 100, "eta": 1.0})
    assert spec["sampler"] == SamplerSpec.of("ddpm") and spec["n"] == 4
