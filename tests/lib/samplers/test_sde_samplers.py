"""Samplers of a score SDE with the exact score of Gaussian data (no training):

- the reverse SDE and predictor-corrector sampling recover the data's mean and covariance within
  4 standard errors, and a score of the wrong scale is caught by the same check;
- the probability-flow ODE (adaptive Dormand-Prince) lands on the flow's closed-form solution,
  and maps the data to the prior and back within the solver's tolerance;
- DPM-Solver++ at 20 evaluations agrees with the tight adaptive solution within a stated bound,
  and each order's step has the local error it should (h^2, h^3, h^4);
- the VE and VP discretisations reproduce NCSN's ancestral sampler and DDPM's, step for step,
  through the adapters that read those networks as score models;
- under a distribution strategy the deterministic samplers give the batch they give without one.
"""

import numpy as np
import pytest
import tensorflow as tf

from diffusion_lib.analytic import GaussianData, optimal_eps_fn
from diffusion_lib.diffusion import GaussianDiffusion
from diffusion_lib.samplers import (
    SamplerSpec,
    ancestral_sample,
    ddpm_sample,
    dpm_solver_pp_sample,
    euler_maruyama_sample,
    pf_ode_sample,
    reverse_diffusion_sample,
    ve_ancestral_sample,
)
from diffusion_lib.samplers.base import run_chain
from diffusion_lib.samplers.probability_flow import dpm_solver_tables, dpm_solver_times
from diffusion_lib.samplers.sde import PredictorTables, chain_levels, pc_step
from diffusion_lib.schedules import beta_schedule, sigma_schedule
from diffusion_lib.sde import (
    VESDE,
    VPSDE,
    SubVPSDE,
    data_prediction,
    discrete_times,
    score_from_diffusion_model,
    score_from_sigma_model,
    ve_sde_of,
    vp_sde_of,
)

pytestmark = pytest.mark.cost(30)

DATA = GaussianData([1.0, -0.5], [[0.5, 0.2], [0.2, 0.3]])
VE = VESDE(sigma_min=0.01, sigma_max=10.0)
N = 4000


def assert_gaussian_moments(samples, data=DATA, z=4.0):
    """Sample mean and covariance within z standard errors of the data's (SE of a mean:
    sqrt(var / n); of a covariance entry: sqrt((s_ii s_jj + s_ij^2) / n))."""
    x = np.asarray(samples, np.float64)
    n = len(x)
    var = np.diag(data.cov)
    assert np.all(np.abs(x.mean(0) - data.mean) < z * np.sqrt(var / n)), x.mean(0)
    se = np.sqrt((np.outer(var, var) + data.cov**2) / n)
    assert np.all(np.abs(np.cov(x.T) - data.cov) < z * se), np.cov(x.T)


def scaled(score_fn, factor):
    return lambda x, t: factor * score_fn(x, t)


@pytest.mark.parametrize(
    "sde, sampler, settings",
    [
        (VPSDE(), euler_maruyama_sample, {"num_steps": 500}),
        (SubVPSDE(), euler_maruyama_sample, {"num_steps": 500}),
        (VE, euler_maruyama_sample, {"num_steps": 500}),
        (VPSDE(), ancestral_sample, {}),
        (VE, ancestral_sample, {}),
        (VPSDE(), reverse_diffusion_sample, {"num_steps": 200, "corrector_steps": 1}),
        (VE, reverse_diffusion_sample, {"num_steps": 200, "corrector_steps": 1}),
    ],
    ids=["em-vp", "em-subvp", "em-ve", "ancestral-vp", "ancestral-ve", "pc-vp", "pc-ve"],
)
def test_reverse_sde_samplers_recover_the_data_moments(sde, sampler, settings):
    score = DATA.score_fn(sde)
    out = sampler(score, sde, (N, 2), seed=1, dtype=tf.float64, **settings)
    assert_gaussian_moments(out.samples.numpy())


def test_the_moment_check_catches_a_score_of_the_wrong_scale():
    """The same check on the reverse SDE with the score scaled by 0.8 fails: the figure moves."""
    sde = VPSDE()
    out = euler_maruyama_sample(
        scaled(DATA.score_fn(sde), 0.8), sde, (N, 2), seed=1, num_steps=500, dtype=tf.float64
    )
    with pytest.raises(AssertionError):
        assert_gaussian_moments(out.samples.numpy())


def test_langevin_corrector_alone_keeps_the_marginal_and_its_snr_sets_the_step():
    """Corrector steps at one time t, the predictor made the identity: a chain started in p_t
    stays in p_t after 20 steps (moments within 4 SE), and a larger snr moves it further (the
    step scales with snr^2, the move with snr)."""
    sde, t = VE, 0.3
    identity = PredictorTables(
        np.array([t]), np.ones(1), np.zeros(1), np.zeros(1), np.ones(1), final_time=t
    )
    _, std = (float(v[0]) for v in sde.marginal(t))
    marginal = GaussianData(DATA.mean, DATA.cov + std**2 * np.eye(2))
    x = tf.constant(marginal.sample(N, 5))
    out = run_chain(pc_step(DATA.score_fn(sde), identity, 20, 0.16), x, 1, tf.constant([1, 2]))
    assert_gaussian_moments(out.samples.numpy(), marginal)
    moves = {}
    for snr in (0.05, 0.3):
        one = run_chain(pc_step(DATA.score_fn(sde), identity, 1, snr), x, 1, tf.constant([1, 2]))
        moves[snr] = float(np.mean(np.abs(one.samples.numpy() - x.numpy())))
    assert 4 < moves[0.3] / moves[0.05] < 8, moves


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VE], ids=["vp", "subvp", "ve"])
def test_probability_flow_ode_lands_on_the_closed_form_and_comes_back(sde):
    """From the prior, within 1e-4 of the exact flow at rtol = atol = 1e-5 (measured: 5e-6 to
    4e-5); data -> prior -> data within 1e-6 at 1e-8. The evaluation count is reported."""
    score = DATA.score_fn(sde)
    eps = sde.default_eps
    x_t = sde.prior_sample((200, 2), 3, tf.float64)
    out = pf_ode_sample(score, sde, x=x_t, seed=0)
    exact = DATA.flow(sde, x_t, sde.T, eps).numpy()
    assert np.max(np.abs(out.samples.numpy() - exact)) < 1e-4
    assert 20 < out.evaluations < 400
    x = tf.constant(DATA.sample(50, 4))
    latent = DATA.flow(sde, x, eps, sde.T)
    back = pf_ode_sample(score, sde, x=latent, seed=0, rtol=1e-8, atol=1e-8)
    assert np.max(np.abs(back.samples.numpy() - x.numpy())) < 1e-6
    assert back.evaluations > out.evaluations


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VE], ids=["vp", "subvp", "ve"])
def test_dpm_solver_pp_at_20_evaluations_agrees_with_the_tight_ode_solution(sde):
    """Max abs difference to the adaptive solution at 1e-7 over 500 samples (data std ~0.7):
    order 2 below 0.07, order 3 below 0.06 (measured: 0.031 / 0.018 VP, 0.059 / 0.050 sub-VP,
    0.017 / 0.006 VE); order 1 (DDIM) is far worse, so the bound tells them apart."""
    score = DATA.score_fn(sde)
    x_t = sde.prior_sample((500, 2), 3, tf.float64)
    tight = pf_ode_sample(score, sde, x=x_t, seed=0, rtol=1e-7, atol=1e-7).samples.numpy()
    errors = {}
    for order in (1, 2, 3):
        out = dpm_solver_pp_sample(score, sde, x=x_t, seed=0, num_steps=20, order=order)
        assert out.evaluations == 20
        errors[order] = np.max(np.abs(out.samples.numpy() - tight))
    assert errors[2] < 0.07 and errors[3] < 0.06, errors
    assert errors[1] > 3 * errors[2], errors


@pytest.mark.parametrize("sde", [VPSDE(), VE], ids=["vp", "ve"])
def test_each_dpm_solver_order_has_its_local_error(sde):
    """One step from the exact state with exact history, halving h: the local error falls by
    2^(order + 1) (4, 8, 16), at least 0.8 of that between the two finest grids."""
    score = DATA.score_fn(sde)
    x_t = sde.prior_sample((50, 2), 3, tf.float64)
    for order, expected in ((1, 4.0), (2, 8.0), (3, 16.0)):
        errors = []
        for steps in (40, 80, 160):
            times = dpm_solver_times(sde, steps, sde.default_eps, False)
            c = dpm_solver_tables(sde, times, order)[steps // 2]
            k = steps // 2
            xs = [DATA.flow(sde, x_t, sde.T, float(times[j])) for j in range(k - 2, k + 2)]
            ts = [tf.fill([50], tf.constant(times[j], tf.float64)) for j in range(k - 2, k + 1)]
            ms = [data_prediction(sde, score(xs[j], ts[j]), xs[j], ts[j]) for j in range(3)]
            step = c[0] * xs[2] + c[1] * ms[2] + c[2] * ms[1] + c[3] * ms[0]
            errors.append(np.max(np.abs((step - xs[3]).numpy())))
        assert errors[1] / errors[2] > 0.8 * expected, (order, errors)


def test_ve_ancestral_on_the_sde_is_ncsns_ancestral_sampler_step_for_step():
    sigmas = sigma_schedule(10.0, 0.05, 30)
    sde = ve_sde_of(sigmas)

    def ncsn(x, sigma):  # the exact score of the data perturbed by sigma
        return DATA.score_fn(VESDE(1e-9, 100.0))(x, _ve_time(sigma))

    def _ve_time(sigma):
        return tf.math.log(tf.cast(sigma, tf.float64) / 1e-9) / np.log(100.0 / 1e-9)

    start = tf.random.stateless_normal([64, 2], [7, 7], dtype=tf.float64) * sigmas[0]
    reference = ve_ancestral_sample(ncsn, start, sigmas, seed=11, frames=5)
    mine = ancestral_sample(score_from_sigma_model(ncsn, sde), sde, x=start, seed=11, frames=5)
    np.testing.assert_allclose(mine.samples.numpy(), reference.samples.numpy(), atol=1e-10)
    np.testing.assert_allclose(mine.frames.numpy(), reference.frames.numpy(), atol=1e-10)
    np.testing.assert_allclose(sde.marginal(discrete_times(sde))[1].numpy(), sigmas[::-1])


def test_vp_ancestral_on_the_sde_is_ddpms_sampler_step_for_step():
    """All 1,000 levels: DDPM's ancestral sampler with variance beta_t (fixed_large) on the
    Bayes-optimal noise predictor, and the SDE's ancestral predictor on the same network read as
    a VP score model, from the same seed."""
    diffusion = GaussianDiffusion(
        beta_schedule("linear", 1000, 1e-4, 0.02), model_var_type="fixed_large"
    )
    model = optimal_eps_fn(diffusion, 0.5, 0.5)
    sde = vp_sde_of(diffusion)
    alpha = sde.marginal(discrete_times(sde))[0].numpy()
    np.testing.assert_allclose(alpha**2, diffusion.alphas_cumprod, rtol=1e-10)
    reference = ddpm_sample(model, diffusion, (64, 3), seed=5, dtype=tf.float64)
    mine = ancestral_sample(
        score_from_diffusion_model(model, diffusion), sde, (64, 3), seed=5, dtype=tf.float64
    )
    np.testing.assert_allclose(mine.samples.numpy(), reference.samples.numpy(), atol=1e-8)


def test_fewer_levels_are_evenly_spaced_and_end_at_the_data():
    assert chain_levels(VPSDE(), 0).tolist() == list(range(999, -1, -1))
    levels = chain_levels(VPSDE(), 10)
    assert levels[0] == 999 and levels[-1] == 0 and len(levels) == 10
    with pytest.raises(ValueError, match="num_steps must be in"):
        chain_levels(VPSDE(), 1001)
    with pytest.raises(ValueError, match="sub-VP SDE is not the limit of a discrete chain"):
        ancestral_sample(DATA.score_fn(SubVPSDE()), SubVPSDE(), (4, 2), seed=0)


def test_settings_are_validated_by_name():
    assert SamplerSpec.of("dpm_solver_pp").kwargs() == {
        "denoise": False,
        "eps": 0.0,
        "num_steps": 20,
        "order": 2,
        "uniform_time": False,
    }
    with pytest.raises(ValueError, match="order must be at most 3"):
        SamplerSpec.of("dpm_solver_pp", order=4)
    with pytest.raises(ValueError, match="snr must be positive"):
        SamplerSpec.of("sde_reverse_diffusion", snr=0.0)
    with pytest.raises(ValueError, match="rtol must be positive"):
        SamplerSpec.of("pf_ode", rtol=-1.0)


def test_frames_and_denoising():
    """Frames from noise to samples (the last frame is the samples, Tweedie's estimate with
    denoise), for a fixed chain and for the adaptive solver, which lands on each frame's time."""
    sde = VPSDE()
    score = DATA.score_fn(sde)
    out = dpm_solver_pp_sample(score, sde, (8, 2), seed=0, frames=5, denoise=True)
    assert out.frames.shape == (5, 8, 2) and out.frame_steps == (0, 5, 10, 15, 20)
    np.testing.assert_array_equal(out.frames[-1].numpy(), out.samples.numpy())
    assert out.evaluations == 21
    ode = pf_ode_sample(score, sde, (8, 2), seed=0, frames=3, dtype=tf.float64)
    assert ode.frame_steps == (0, 50, 100)
    x_t = ode.frames[0]
    middle = DATA.flow(sde, x_t, 1.0, 1.0 - 0.5 * (1.0 - sde.default_eps)).numpy()
    np.testing.assert_allclose(ode.frames[1].numpy(), middle, atol=1e-4)
    np.testing.assert_array_equal(ode.frames[-1].numpy(), ode.samples.numpy())


def test_deterministic_samplers_give_the_same_batch_under_a_strategy():
    """Two logical devices: DPM-Solver++ (its state carries two past predictions) and the
    adaptive solver split the batch and gather it back in order; a stochastic PC chain runs too
    (its noise depends on the replica, by design) and is reproducible."""
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    sde = VPSDE()
    score = DATA.score_fn(sde)
    x_t = sde.prior_sample((16, 2), 3, tf.float32)
    for sampler in (dpm_solver_pp_sample, pf_ode_sample):
        alone = sampler(score, sde, x=x_t, seed=0, frames=3)
        split = sampler(score, sde, x=x_t, seed=0, frames=3, strategy=strategy)
        np.testing.assert_allclose(split.samples.numpy(), alone.samples.numpy(), atol=1e-5)
        np.testing.assert_allclose(split.frames.numpy(), alone.frames.numpy(), atol=1e-5)
    runs = [
        reverse_diffusion_sample(
            score, sde, x=x_t, seed=4, num_steps=20, corrector_steps=1, strategy=strategy
        ).samples.numpy()
        for _ in range(2)
    ]
    np.testing.assert_array_equal(runs[0], runs[1])


@pytest.mark.parametrize(
    ("sampler", "corrector_steps", "denoise"),
    [
        (ancestral_sample, 0, False),
        (reverse_diffusion_sample, 1, True),
        (euler_maruyama_sample, 2, False),
    ],
)
def test_predictor_samplers_report_the_network_calls_they_make(sampler, corrector_steps, denoise):
    """`evaluations` is the number of score calls per sample, counted inside the graph: one per
    predictor step, `corrector_steps` more per step, and one for Tweedie's denoising."""
    sde = VPSDE(num_steps=200)
    score = DATA.score_fn(sde)
    calls = tf.Variable(0, dtype=tf.int64)

    def counted(x, t):
        calls.assign_add(1)
        return score(x, t)

    out = sampler(
        counted, sde, (4, 2), seed=0, num_steps=10, corrector_steps=corrector_steps, denoise=denoise
    )
    assert out.evaluations == int(calls.numpy()) == 10 * (1 + corrector_steps) + denoise
