"""training/objectives.py: each score objective (NCSN, DSM, SSM) trains to finite losses and
restores as a sigma-conditioned network; the continuous-time SDE objective trains, samples, and
its loss with the exact score of Gaussian data is the closed form of the DSM identity."""

import numpy as np
import pytest
import tensorflow as tf

from diffusion_lib.analytic import GaussianData
from diffusion_lib.draw import draw
from diffusion_lib.run import Run
from diffusion_lib.samplers import SamplerSpec
from diffusion_lib.training import (
    config_preset,
    train,
)
from diffusion_lib.training.objectives import TIME_SCALE, _replica_labels, build_objective

pytestmark = pytest.mark.cost(15)


def _tiny(data_dir, preset, **changes):
    """`preset` on the tiny MLP for 30 steps, one checkpoint at the end."""
    return config_preset(
        preset,
        data_dir=data_dir,
        network="mlp-tiny",
        num_steps=30,
        log_every=10,
        checkpoint_every=30,
        **changes,
    )


def _trained(config, run_dir):
    """`config` trained through the real engine in `run_dir`, every logged loss finite: the
    restored run."""
    reports = []
    train(config, run_dir, progress=reports.append)
    assert all(np.isfinite(r.loss) for r in reports)
    return Run(run_dir).restore()


@pytest.mark.parametrize("objective", ["ncsn", "dsm", "ssm"])
def test_score_objectives_train(eight, tmp_path, objective):
    restored = _trained(_tiny(eight, "toy-ncsn", objective=objective), tmp_path / "run")
    assert restored.model.conditioning == "log_sigma"


@pytest.mark.parametrize("sde", ["vp", "ve"])
def test_sde_objective_trains_and_samples_through_its_sde(eight, tmp_path, sde):
    """Continuous-time DSM through the real engine: finite losses, and the restored run draws
    with a score-SDE sampler (its objective's own SDE)."""
    restored = _trained(_tiny(eight, f"toy-sde-{sde}"), tmp_path / "run")
    assert restored.objective.sde.name == sde
    drawn = draw(restored, SamplerSpec.of("dpm_solver_pp", num_steps=5), 16, 0)
    assert drawn.samples.shape == (16, 2) and np.all(np.isfinite(drawn.samples))


def _oracle_network(objective, data):
    """The network that makes the objective's score exactly the data's (VP: -std * score at
    t = cond / 999; VE: the score at sigma = cond)."""
    sde = objective.sde
    exact = data.score_fn(sde)

    def model(x, cond, training=False, seed=None):
        x = tf.cast(x, tf.float64)
        if sde.name == "ve":
            t = tf.math.log(tf.cast(cond, tf.float64) / sde.sigma_min) / np.log(
                sde.sigma_max / sde.sigma_min
            )
            return exact(x, t)
        t = tf.cast(cond, tf.float64) / TIME_SCALE
        _, std = sde.marginal(t)
        return -std[:, None] * exact(x, t)

    return model


@pytest.mark.parametrize("sde", ["vp", "subvp", "ve"])
def test_sde_objective_loss_with_the_exact_score_is_its_closed_form(sde):
    """Denoising score matching identity: with the true score, E ||std s + z||^2 / D =
    1 - std^2 tr(C_t^-1) / D, averaged here over t ~ U(eps, 1) by quadrature. The objective's
    mean loss over 40,000 examples is within 4 standard errors of it, and a score 10% too small
    adds exactly the excess the identity predicts (the check moves)."""
    data = GaussianData([1.0, -0.5], [[0.5, 0.2], [0.2, 0.3]])
    params = {"sigma_min": 0.01, "sigma_max": 10.0} if sde == "ve" else {}
    config = config_preset("toy-sde-vp", sde=sde, **params)
    objective = build_objective(config)
    x = tf.constant(data.sample(40_000, 0))
    seed = tf.constant([3, 4], tf.int64)
    losses = objective.losses(_oracle_network(objective, data), x, seed, 0, 40_000).numpy()
    ts = np.linspace(config.model.sde_eps, 1.0, 4001)
    alpha, std = (v.numpy() for v in objective.sde.marginal(ts))
    values = np.linalg.eigvalsh(data.cov)
    inverse_trace = np.sum(1.0 / (alpha[:, None] ** 2 * values + std[:, None] ** 2), axis=1)
    expected = np.trapezoid(1.0 - std**2 * inverse_trace / 2, ts) / (1.0 - config.model.sde_eps)
    se = losses.std() / np.sqrt(losses.size)
    assert abs(losses.mean() - expected) < 4 * se, (losses.mean(), expected, se)
    # A score 10% too small adds 0.01 E ||std s||^2 / D = 0.01 (1 - expected): paired on the
    # same draws, that excess is measured to within its own standard error, far from zero.
    oracle = _oracle_network(objective, data)
    shrunk = objective.losses(lambda *a, **k: 0.9 * oracle(*a, **k), x, seed, 0, 40_000)
    excess = shrunk.numpy() - losses
    excess_se = excess.std() / np.sqrt(excess.size)
    assert abs(excess.mean() - 0.01 * (1.0 - expected)) < 4 * excess_se
    assert excess.mean() > 10 * excess_se


@pytest.mark.parametrize("objective", ["ddpm", "ncsn"])
def test_log_normal_noise_sampling_draws_log_sigma_as_configured(objective):
    """The objective's draw of levels: log sigma (a DDPM timestep's sqrt((1 - abar) / abar))
    has the configured mean within 4 standard errors over 20,000 draws; the default draw stays
    the uniform one, value for value (so existing runs are bit-identical)."""
    levels = {"num_levels": 100, "sigma_max": 50.0, "sigma_min": 0.005}
    config = config_preset(
        "mnist-ddpm" if objective == "ddpm" else "mnist-ncsn",
        **({} if objective == "ddpm" else levels),
    )
    seed = tf.constant([3, 4], tf.int64)
    default = build_objective(config)._draw_levels(64, seed).numpy()
    if objective == "ddpm":
        uniform = tf.random.stateless_uniform([64], seed, minval=0, maxval=1000, dtype=tf.int32)
    else:
        uniform = tf.random.stateless_uniform([64], seed, 0, 100, dtype=tf.int32)
    np.testing.assert_array_equal(default, uniform.numpy())
    built = build_objective(
        config.replace(noise_sampling="log_normal", noise_log_mean=-0.5, noise_log_std=0.8)
    )
    if objective == "ddpm":
        abar = built.diffusion.alphas_cumprod
        sigmas = np.sqrt((1.0 - abar) / abar)
    else:
        sigmas = built.sigmas
    levels = built._draw_levels(20_000, seed).numpy()
    assert levels.min() >= 0 and levels.max() < sigmas.size
    log_sigma = np.log(sigmas[levels])
    standard_error = log_sigma.std() / np.sqrt(levels.size)
    assert abs(log_sigma.mean() - (-0.5)) < 4 * standard_error + 0.01
    assert log_sigma.std() == pytest.approx(0.8, rel=0.05)


def test_label_dropout_replaces_its_share_by_the_null_class_whatever_the_replicas():
    """Each label becomes the null class K with probability label_dropout: over 40,000 labels the
    share is within 5 standard errors of 0.25, the rest keep their label, and a replica's rows
    (sliced by offset) get exactly what the whole batch gets there. Unconditional: no labels."""
    config = config_preset("toy-ddpm", num_classes=7, label_dropout=0.25)
    labels = tf.constant(np.arange(40_000) % 7, tf.int64)
    seed = tf.constant([3, 4], tf.int64)
    whole = _replica_labels(config, labels, seed, 0, 40_000)["labels"].numpy()
    dropped = whole == 7
    assert abs(dropped.mean() - 0.25) < 5 * np.sqrt(0.25 * 0.75 / 40_000), dropped.mean()
    np.testing.assert_array_equal(whole[~dropped], labels.numpy()[~dropped])
    halves = [
        _replica_labels(config, labels[k * 20_000 : (k + 1) * 20_000], seed, k * 20_000, 40_000)
        for k in (0, 1)
    ]
    np.testing.assert_array_equal(np.concatenate([h["labels"] for h in halves]), whole)
    assert _replica_labels(config.replace(num_classes=0), labels, seed, 0, 40_000) == {}


@pytest.mark.parametrize(
    ("preset", "overrides"),
    [
        ("mnist-ddpm", {}),
        ("mnist-ncsn", {}),
        ("toy-ddpm", {"objective": "dsm"}),
        ("toy-ssm", {}),
        ("toy-sde-vp", {}),
        ("toy-sde-vp", {"sde": "subvp"}),
        ("toy-sde-ve", {}),
    ],
)
def test_noise_level_is_the_sigma_the_networks_condition_stands_for(preset, overrides):
    """What guidance limited to an interval reads: a DDPM timestep i stands for
    sqrt((1 - abar_i) / abar_i); a VP SDE's network condition 999 t for std(t) / alpha(t), here
    in closed form (alpha = exp(-t^2 (b1 - b0) / 4 - t b0 / 2)); a sigma-conditioned network's
    condition is sigma itself."""
    objective = build_objective(config_preset(preset, **overrides))
    c = objective.config
    if c.objective == "ddpm":
        cond = np.array([0, 1, 250, 999])
        abar = np.cumprod(
            1.0 - np.linspace(c.model.beta_start, c.model.beta_end, c.model.num_timesteps)
        )
        expected = np.sqrt((1.0 - abar[cond]) / abar[cond])
    elif c.objective == "sde" and c.model.sde != "ve":
        t = np.array([0.01, 0.3, 0.5, 1.0])
        cond = TIME_SCALE * t
        log_alpha = (
            -0.25 * t**2 * (c.model.beta_max - c.model.beta_min) - 0.5 * t * c.model.beta_min
        )
        alpha = np.exp(log_alpha)
        std = np.sqrt(1.0 - alpha**2) if c.model.sde == "vp" else 1.0 - alpha**2
        expected = std / alpha
    else:
        cond = expected = np.array([0.01, 0.3, 5.0, 50.0])
    level = objective.noise_level(tf.constant(cond, tf.float32)).numpy()
    np.testing.assert_allclose(level, expected, rtol=2e-5)


def test_edm_trains_restores_and_samples(eight, tmp_path):
    """EDM through the real engine: finite losses, a network embedding c_noise, and draws by
    Heun's sampler and another score-SDE sampler of its VE view."""
    restored = _trained(_tiny(eight, "toy-edm"), tmp_path / "run")
    assert restored.model.conditioning == "c_noise"
    assert restored.objective.noise_level(tf.constant([0.3])).numpy() == pytest.approx(0.3)
    for spec in (SamplerSpec.of("heun", num_steps=5), SamplerSpec.of("dpm_solver_pp", num_steps=5)):
        drawn = draw(restored, spec, 16, 0)
        assert drawn.samples.shape == (16, 2) and np.all(np.isfinite(drawn.samples))
