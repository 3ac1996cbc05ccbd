"""Pipeline presets: every part builds and fits its model; every score variant sampled by annealed
Langevin steps by technique 4 for its own levels; the flows' choices come from the registries."""

import typing

import pytest

from diffusion_lib.draw import check_compatible
from diffusion_lib.samplers import SAMPLERS, SamplerSpec, technique4_step_lr
from diffusion_lib.schedules import sigma_schedule
from diffusion_lib.training.objectives import build_objective
from flows.params import Model, Preset, Sampler
from tasks.presets import (
    MODEL_VARIANTS,
    MODELS,
    OBJECTIVE_OF,
    PRESETS,
    SAMPLERS_OF,
    SCORE_VARIANTS,
    TrainPart,
    resolve,
)


@pytest.mark.parametrize("preset", sorted(SCORE_VARIANTS))
def test_score_variants_step_by_technique_4(preset):
    plan = resolve(preset, "ncsn")
    config = plan.train.config("unused")
    sigmas = sigma_schedule(config.model.sigma_max, config.model.sigma_min, config.model.num_levels)
    for sampler in (plan.eval.sampler, plan.samples.sampler):
        if sampler.name == "ve_ancestral":
            continue  # ancestral sampling has no step size: its steps are the levels' gaps
        assert sampler.name == "annealed_langevin", preset
        expected = technique4_step_lr(sigmas, sampler.get("steps_per_level"))
        assert sampler.get("step_lr") == pytest.approx(expected, rel=0.03), preset


PAIRS = [(preset, "ddpm") for preset in sorted(PRESETS)] + [
    (preset, model) for model, variants in MODEL_VARIANTS.items() for preset in sorted(variants)
]


@pytest.mark.parametrize(("preset", "model"), PAIRS)
def test_every_preset_trains_and_samples_with_samplers_that_fit_it(preset, model):
    """Each preset (and each model's variant of it) builds its training config, and evaluation
    and the sample set share one sampler, one its objective serves."""
    plan = resolve(preset, model)
    config = plan.train.config("unused")
    assert config.objective == OBJECTIVE_OF[model]
    assert plan.eval.sampler == plan.samples.sampler
    check_compatible(plan.samples.sampler, build_objective(config))


def test_flow_choices_come_from_the_registries():
    assert set(typing.get_args(Preset)) == set(PRESETS)
    assert set(typing.get_args(Model)) == set(MODELS)
    assert set(typing.get_args(Sampler)) == set(SAMPLERS)
    sde = {
        "sde_euler_maruyama",
        "sde_reverse_diffusion",
        "sde_ancestral",
        "pf_ode",
        "dpm_solver_pp",
        "heun",
        "euler",
    }
    assert {k: set(v) for k, v in SAMPLERS_OF.items()} == {
        "ddpm": {"ddpm", "ddim"} | sde,
        "ncsn": {"langevin", "annealed_langevin", "ve_ancestral"} | sde,
        "sde-vp": sde,
        "sde-ve": sde,
        "edm": sde,
    }


def test_the_flows_flat_parameters_change_one_field_each():
    base = resolve("mnist-cpu", "ddpm")
    plan = resolve("mnist-cpu", "ddpm", steps=90, batch_size=8, num_samples=5, sampler="ddpm")
    config = plan.train.config("unused")
    assert (config.run.num_steps, config.run.checkpoint_every, config.optim.batch_size) == (
        90,
        90,
        8,
    )
    assert config.optim.learning_rate == base.train.config("unused").optim.learning_rate
    assert plan.samples.n == 5 and plan.samples.sampler == SamplerSpec.of("ddpm")
    assert plan.eval == base.eval  # the sample set's sampler only
    same = resolve("mnist-cpu", "ddpm", sampler="ddim")
    assert same.samples.sampler == base.samples.sampler  # its settings kept
    guided = resolve("mnist-cpu", "ddpm", sampler="ddpm", guidance=0.5)
    assert guided.samples.sampler == SamplerSpec.of("ddpm", guidance=0.5)
    assert guided.eval == base.eval and base.train.config("unused").network.num_classes == 10
    # NCSN guides in an interval of noise levels: another weight keeps it, no guidance drops it.
    ncsn = resolve("mnist-cpu", "ncsn").samples.sampler
    assert ncsn.guidance == 0.35 and ncsn.guidance_interval == (0.5, 10.0)
    stronger = resolve("mnist-cpu", "ncsn", guidance=1.0).samples.sampler
    assert stronger == ncsn.replace(guidance=1.0) and stronger.guidance_interval == (0.5, 10.0)
    assert resolve("mnist-cpu", "ncsn", guidance=0).samples.sampler == SamplerSpec.of(
        "ve_ancestral"
    )
    # The interval is the flow's too: guidance at every level, or DDPM's guidance limited.
    everywhere = resolve("mnist-cpu", "ncsn", guidance_sigma_min=0, guidance_sigma_max=1e3)
    assert everywhere.samples.sampler == ncsn.replace(guidance_sigma_min=0, guidance_sigma_max=1e3)
    assert everywhere.samples.sampler.guidance_interval == (0.0, 1000.0)
    assert everywhere.eval == resolve("mnist-cpu", "ncsn").eval
    limited = resolve("mnist-cpu", "ddpm", guidance=0.5, guidance_sigma_max=2.0).samples.sampler
    assert limited.guidance == 0.5 and limited.guidance_interval == (0.0, 2.0)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"preset": "imagenet"}, "preset must be one of"),
        ({"preset": "tiny", "model": "vae"}, "model must be one of"),
        ({"preset": "cifar10", "model": "ncsn"}, "has no ncsn variant"),
        ({"preset": "cifar10", "model": "sde-ve"}, "has no sde-ve variant"),
        ({"preset": "tiny", "model": "sde-vp", "sampler": "ddim"}, "cannot sample a sde-vp model"),
        ({"preset": "tiny", "model": "ncsn", "sampler": "ddim"}, "cannot sample a ncsn model"),
        ({"preset": "tiny", "steps": -5}, "num_steps"),
        ({"preset": "tiny", "guidance": 1.0}, "guidance: preset 'tiny' trains an unconditional"),
        ({"preset": "mnist-cpu", "guidance": 1.0}, "'mnist-cpu' trains an unconditional edm"),
        ({"preset": "mnist-cpu", "model": "ddpm", "guidance": -1.0}, "guidance must be at least"),
        # Bounds where nothing is guided would limit nothing: refused instead of ignored.
        (
            {"preset": "mnist-cpu", "model": "ddpm", "guidance_sigma_min": 1.0},
            "guidance_sigma_min limit guidance .* set guidance > 0",
        ),
        (
            {"preset": "mnist-cpu", "model": "ncsn", "guidance": 0, "guidance_sigma_max": 3.0},
            "guidance_sigma_max limit guidance .* set guidance > 0",
        ),
        (
            {"preset": "mnist-cpu", "model": "ncsn", "guidance_sigma_min": 20.0},
            "guidance_sigma_min must be below guidance_sigma_max",
        ),
    ],
)
def test_bad_choices_are_refused_by_name(arguments, message):
    with pytest.raises(ValueError, match=message):
        resolve(**arguments)


def test_settings_changed_by_part():
    plan = resolve("tiny", model="sde-vp").with_settings("eval", num_steps=3, n=7)
    assert plan.eval.n == 7 and plan.eval.sampler.get("num_steps") == 3
    plan = plan.with_settings("train", learning_rate=None)
    assert (
        plan.train.config("unused").optim.learning_rate
        == TrainPart.of("toy-sde-vp").config("x").optim.learning_rate
    )
    with pytest.raises(ValueError, match="has no setting steps"):
        plan.with_settings("samples", steps=3)
    with pytest.raises(ValueError, match="part must be"):
        plan.with_settings("data", n=3)


def test_the_main_job_models_p_x_unless_told_otherwise():
    """mnist-cpu trains EDM without labels when no model is named; its class-conditional DDPM
    is one parameter away; the other presets train their DDPM."""
    main = resolve("mnist-cpu").train.config("unused")
    assert (main.objective, main.network.num_classes) == ("edm", 0)
    conditional = resolve("mnist-cpu", "ddpm").train.config("unused")
    assert (conditional.objective, conditional.network.num_classes) == ("ddpm", 10)
    assert resolve("tiny").train.config("unused").objective == "ddpm"
    assert resolve("mnist-cpu", None) == resolve("mnist-cpu", "edm")


def test_the_main_jobs_sample_set_is_its_evaluations_draw():
    """mnist-cpu's sample set asks for exactly the chunk its evaluation drew (same sampler, seed
    and a single chunk of the same n), so drawing it costs nothing more (draw's memo)."""
    for model in MODELS:
        plan = resolve("mnist-cpu", model)
        assert plan.samples.sampler == plan.eval.sampler and plan.samples.seed == plan.eval.seed
        assert plan.samples.n == plan.eval.n <= min(plan.samples.chunk_rows, plan.eval.batch_size)
