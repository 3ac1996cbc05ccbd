"""`SamplerSpec`: a registered sampler with its own settings, defaults filled in and every bad
value refused by name before anything runs; `frames` may be a function of the chain's length."""

import numpy as np
import pytest

from diffusion_lib.diffusion import GaussianDiffusion
from diffusion_lib.samplers import SAMPLERS, SamplerSpec, ddim_sample
from diffusion_lib.schedules import beta_schedule


def test_defaults_come_from_the_registry_and_round_trip():
    spec = SamplerSpec.of("ddim", num_steps=100)
    assert spec.to_dict() == {"name": "ddim", "num_steps": 100, "eta": 0.0}
    assert SamplerSpec.from_dict(spec.to_dict()) == spec and hash(spec) == hash(spec.replace())
    assert spec.replace(eta=1).get("eta") == 1.0 and spec.family == "diffusion"
    assert SamplerSpec.of("ddpm").to_dict() == {"name": "ddpm"}
    for name, info in SAMPLERS.items():
        assert SamplerSpec.of(name).kwargs() == {k: s.default for k, s in info.settings.items()}


def test_guidance_is_every_samplers_setting_and_absent_at_zero():
    """Classifier-free guidance is no sampler's own keyword: the spec carries it (and keys the
    draw memo by it), the sampler function never sees it, and at 0 the spec is the plain one."""
    guided = SamplerSpec.of("ddim", num_steps=100, eta=1.0, guidance=2)
    assert guided.guidance == 2.0 and guided.kwargs() == {"num_steps": 100, "eta": 1.0}
    assert guided.to_dict() == {"name": "ddim", "num_steps": 100, "eta": 1.0, "guidance": 2.0}
    assert SamplerSpec.from_dict(guided.to_dict()) == guided
    plain = SamplerSpec.of("ddim", num_steps=100, eta=1.0)
    assert guided.replace(guidance=0) == plain and plain.guidance == 0.0 and guided != plain
    assert SamplerSpec.of("ve_ancestral", guidance=1.5).kwargs() == {}


def test_guidance_interval_is_kept_only_when_it_limits_guidance():
    """Bounds on the noise levels guidance applies at: absent at their defaults (0, inf), dropped
    when guidance is turned off, never passed to the sampler."""
    spec = SamplerSpec.of("ve_ancestral", guidance=0.5, guidance_sigma_min=0.5)
    assert spec.guidance_interval == (0.5, float("inf")) and spec.kwargs() == {}
    assert spec.to_dict() == {"name": "ve_ancestral", "guidance": 0.5, "guidance_sigma_min": 0.5}
    bounded = spec.replace(guidance_sigma_max=10)
    assert bounded.guidance_interval == (0.5, 10.0) and SamplerSpec.from_dict(bounded.to_dict())
    assert SamplerSpec.of("ve_ancestral", guidance=0.5).guidance_interval == (0.0, float("inf"))
    assert bounded.replace(guidance=0) == SamplerSpec.of("ve_ancestral")
    # Bounds given to replace are kept, so where nothing is guided they are refused, not lost.
    with pytest.raises(ValueError, match="guidance_sigma_max limit guidance .* set guidance > 0"):
        SamplerSpec.of("ddim").replace(guidance_sigma_max=2.0)
    assert SamplerSpec.of("ddim", guidance=1, guidance_sigma_max=float("inf")) == SamplerSpec.of(
        "ddim", guidance=1
    )


@pytest.mark.parametrize(
    ("name", "settings", "message"),
    [
        ("leapfrog", {}, "sampler must be one of"),
        ("ddim", {"steps": 10}, "has no setting steps; its settings: \\['eta', 'num_steps'\\]"),
        ("ddpm", {"eta": 1.0}, "has no setting eta; its settings: none"),
        ("ddim", {"eta": 1.5}, "eta must be at most 1.0"),
        ("ddim", {"num_steps": 0}, "num_steps must be at least 1"),
        ("ddim", {"num_steps": 2.5}, "num_steps must be an integer"),
        ("ddim", {"num_steps": True}, "num_steps must be a number"),
        ("annealed_langevin", {"step_lr": 0.0}, "step_lr must be positive"),
        ("annealed_langevin", {"step_lr": float("nan")}, "step_lr must be finite"),
        ("annealed_langevin", {"denoise_final": 1}, "denoise_final must be true or false"),
        ("langevin", {"step_size": "big"}, "step_size must be a number"),
        ("ddim", {"guidance": -1.0}, "guidance must be at least 0.0"),
        ("ddpm", {"guidance": float("inf")}, "guidance must be finite"),
        ("ddpm", {"guidance": 1, "guidance_sigma_min": -1}, "guidance_sigma_min must be at least"),
        ("ddpm", {"guidance": 1, "guidance_sigma_max": 0}, "guidance_sigma_max must be positive"),
        ("ddpm", {"guidance_sigma_max": float("nan")}, "guidance_sigma_max must be finite"),
        (
            "ddim",
            {"guidance": 1, "guidance_sigma_min": 2, "guidance_sigma_max": 2},
            "guidance_sigma_min must be below guidance_sigma_max, got 2.0 and 2.0",
        ),
        ("ddim", {"guidance_sigma": 1}, "and every sampler's guidance, guidance_sigma_min"),
        (
            "ddim",
            {"guidance_sigma_max": 5},
            "guidance_sigma_max limit guidance .* set guidance > 0",
        ),
        (
            "ddim",
            {"guidance": 0, "guidance_sigma_min": 1, "guidance_sigma_max": 5},
            "guidance_sigma_min and guidance_sigma_max limit guidance",
        ),
    ],
)
def test_bad_settings_are_refused_by_name(name, settings, message):
    with pytest.raises(ValueError, match=message):
        SamplerSpec.of(name, **settings)


def test_a_spec_cannot_be_built_around_the_checks():
    with pytest.raises(ValueError, match="num_steps must be at least 1"):
        SamplerSpec("ddim", (("num_steps", -3),))
    with pytest.raises(ValueError, match="SamplerSpec.of"):
        SamplerSpec("ddim")  # settings left out, not filled in


def test_frames_as_a_function_of_the_chain_length():
    diffusion = GaussianDiffusion(beta_schedule("linear", 100, 1e-4, 0.02))

    def model(x, t):
        return 0.0 * x

    seen = []

    def frames(length):
        seen.append(length)
        return [0, length // 2, length]

    out = ddim_sample(model, diffusion, (3, 2), seed=0, num_steps=10, frames=frames)
    assert seen == [10] and out.frame_steps == (0, 5, 10)
    np.testing.assert_array_equal(out.frames[-1].numpy(), out.samples.numpy())
