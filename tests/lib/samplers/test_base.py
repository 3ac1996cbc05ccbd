"""What every sampler shares (samplers/base.py): the registry, input checks, seeds and frames,
x0 clipping, and a batch split over two replicas."""

import numpy as np
import pytest
import tensorflow as tf

from diffusion_lib.analytic import optimal_eps_fn
from diffusion_lib.samplers import (
    SAMPLERS,
    annealed_langevin_dynamics,
    ddim_sample,
    ddim_timesteps,
    ddpm_sample,
    get_sampler,
    langevin_dynamics,
)
from tests.lib.samplers.gaussian_chains import (
    MU,
    STD,
    D,
    N,
    assert_moments,
    chain_moments,
)


def test_registry():
    assert {"ddpm", "ddim", "langevin", "annealed_langevin", "ve_ancestral"} <= set(SAMPLERS)
    assert get_sampler("ddim").family == "diffusion" and get_sampler("langevin").family == "score"
    with pytest.raises(ValueError, match="sampler must be one of"):
        get_sampler("leapfrog")


def test_bad_inputs(diffusion):
    model = optimal_eps_fn(diffusion, MU, STD)
    with pytest.raises(ValueError, match="eta"):
        ddim_sample(model, diffusion, (2, 2), seed=0, eta=1.5)
    with pytest.raises(ValueError, match="spacing"):
        ddim_sample(model, diffusion, (2, 2), seed=0, spacing="cubic")
    with pytest.raises(ValueError, match="num_steps"):
        ddim_sample(model, diffusion, (2, 2), seed=0, num_steps=1001)
    with pytest.raises(ValueError, match="shape"):
        ddpm_sample(model, diffusion, (4,), seed=0)
    with pytest.raises(ValueError, match="noise contains NaN"):
        ddpm_sample(model, diffusion, noise=tf.fill([2, 2], np.nan), seed=0)
    with pytest.raises(ValueError, match="model output has shape"):
        ddim_sample(lambda x, t: x[:, :1], diffusion, (2, 2), seed=0, num_steps=3)
    with pytest.raises(ValueError, match="step_size"):
        langevin_dynamics(lambda x: -x, tf.zeros([2, 2]), step_size=-0.1, num_steps=10, seed=0)
    with pytest.raises(ValueError, match="score_fn output has shape"):
        langevin_dynamics(
            lambda x: -x[:, :1], tf.zeros([2, 2]), step_size=0.1, num_steps=10, seed=0
        )
    with pytest.raises(TypeError, match="x must be a floating"):
        langevin_dynamics(
            lambda x: -x, tf.zeros([2, 2], tf.int32), step_size=0.1, num_steps=10, seed=0
        )
    with pytest.raises(ValueError, match="sigmas must be non-increasing"):
        annealed_langevin_dynamics(
            lambda x, s: -x, tf.zeros([2, 2]), [0.1, 1.0], steps_per_level=10, step_lr=0.1, seed=0
        )
    with pytest.raises(ValueError, match="step_lr must be below 2"):
        annealed_langevin_dynamics(
            lambda x, s: -x, tf.zeros([2, 2]), [1.0, 0.05], steps_per_level=10, step_lr=0.01, seed=0
        )
    with pytest.raises(TypeError, match="seed"):
        langevin_dynamics(lambda x: -x, tf.zeros([2, 2]), step_size=0.1, num_steps=10, seed=None)
    with pytest.raises(ValueError, match="frames"):
        ddim_sample(model, diffusion, (2, 2), seed=0, num_steps=3, frames=[0, 7])


def test_seeded_reproducibility_and_frames(diffusion):
    model = optimal_eps_fn(diffusion, MU, STD)
    first = ddim_sample(model, diffusion, (8, 3), seed=3, num_steps=20, eta=0.5, frames=5)
    again = ddim_sample(model, diffusion, (8, 3), seed=3, num_steps=20, eta=0.5, frames=5)
    other = ddim_sample(model, diffusion, (8, 3), seed=4, num_steps=20, eta=0.5)
    np.testing.assert_array_equal(first.samples.numpy(), again.samples.numpy())
    assert not np.allclose(first.samples.numpy(), other.samples.numpy())
    assert first.frames.shape == (5, 8, 3) and first.frame_steps == (0, 5, 10, 15, 20)
    np.testing.assert_array_equal(first.frames[-1].numpy(), first.samples.numpy())
    start = tf.random.stateless_normal([8, 3], [9, 9])
    given = ddpm_sample(model, diffusion, noise=start, seed=3, frames=[0, 1000])
    np.testing.assert_array_equal(given.frames[0].numpy(), start.numpy())


def test_clip_x0_bounds_the_samples(diffusion):
    model = optimal_eps_fn(diffusion, 3.0, 0.5)  # data far outside [-1, 1]
    for result in (
        ddpm_sample(model, diffusion, (256, 2), seed=0, clip_x0=(-1.0, 1.0)),
        ddim_sample(model, diffusion, (256, 2), seed=0, num_steps=25, clip_x0=(-1.0, 1.0)),
    ):
        assert float(tf.reduce_max(tf.abs(result.samples))) <= 1.0 + 1e-6


def test_sampling_split_over_two_replicas(diffusion):
    """Two logical CPUs: each replica runs half the batch; the samples keep the data law."""
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    model = optimal_eps_fn(diffusion, MU, STD)
    result = ddim_sample(
        model, diffusion, (N, D), seed=1, num_steps=50, strategy=strategy, frames=3
    )
    mean, var = chain_moments(diffusion.betas, ddim_timesteps(1000, 50), 0.0, MU, STD)
    assert result.samples.shape == (N, D) and result.frames.shape == (3, N, D)
    assert_moments(result.samples, mean, var)
    # eta = 0 is deterministic given the start: the split changes nothing but the batching.
    single = ddim_sample(model, diffusion, (N, D), seed=1, num_steps=50)
    np.testing.assert_allclose(result.samples.numpy(), single.samples.numpy(), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="not divisible by 2 replicas"):
        ddim_sample(model, diffusion, (3, D), seed=1, num_steps=5, strategy=strategy)


def test_each_sampler_setting_has_one_default_the_registrys():
    """Every registered sampler function, called without a setting, takes its Setting's
    default: its signature shows exactly those defaults (a function cannot state its own)."""
    import inspect

    from diffusion_lib.samplers import SAMPLERS

    for name, info in SAMPLERS.items():
        parameters = inspect.signature(info.fn).parameters
        for key, setting in info.settings.items():
            assert parameters[key].kind is inspect.Parameter.KEYWORD_ONLY, (name, key)
            assert parameters[key].default == setting.default, (name, key)


def test_a_sampler_stating_a_default_of_its_own_or_a_positional_setting_is_refused():
    from diffusion_lib.samplers.base import Setting, register_sampler

    def own_default(model, diffusion, shape, *, seed, num_steps: int = 7):
        raise AssertionError("never called")

    with pytest.raises(TypeError, match="default of its own .* is the only one"):
        register_sampler("own-default", "diffusion", settings={"num_steps": Setting(5)})(
            own_default
        )

    def positional(score_fn, x, step_size, *, seed):
        raise AssertionError("never called")

    with pytest.raises(TypeError, match="keyword-only"):
        register_sampler("positional", "score", settings={"step_size": Setting(0.1)})(positional)

    def fine(score_fn, x, *, seed, step_size, **rest):
        return step_size, rest

    sampler = register_sampler(
        "fine-for-the-test", "score", settings={"step_size": Setting(0.1), "passed_on": Setting(3)}
    )(fine)
    try:
        assert sampler(None, None, seed=0) == (0.1, {"passed_on": 3})
        assert sampler(None, None, seed=0, passed_on=4, step_size=0.2) == (0.2, {"passed_on": 4})
    finally:
        from diffusion_lib.samplers import SAMPLERS

        del SAMPLERS["fine-for-the-test"]
