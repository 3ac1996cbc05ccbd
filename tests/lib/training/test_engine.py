"""The training engine in-process: overfitting, EMA, replica-count independence, divergence,
and bad inputs that must leave existing checkpoints untouched."""

import json
import math
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from diffusion_lib.data import DatasetSpec, prepare_dataset
from diffusion_lib.run import Run
from diffusion_lib.samplers import ddpm_sample
from diffusion_lib.training import (
    CheckpointMismatch,
    ConfigError,
    Trainer,
    TrainingDiverged,
    committed_steps,
    config_preset,
    engine,
    train,
)
from diffusion_lib.training.strategy import CountingReduce, counting_collective

pytestmark = pytest.mark.cost(100)

# The engine's image tests train a one-level U-Net without attention: what they check is the
# step (replicas, precision, XLA), not the network (tests/lib/networks), and it traces in about
# half the time of unet-tiny (measured: 16.6 against 27.9 s for the two-replica test's runs).
ONE_LEVEL_UNET = (("channel_mults", (1,)), ("attn_resolutions", ()))


def _mtimes(directory):
    return {p.name: p.stat().st_mtime_ns for p in pathlib.Path(directory).iterdir()}


def test_a_tiny_model_learns_eight_gaussians_and_its_samples_land_on_them(eight, tmp_path):
    config = config_preset(
        "toy-ddpm",
        data_dir=eight,
        num_steps=1500,
        log_every=500,
        checkpoint_every=1500,
        ema_decay=0.99,
    )
    reports = []
    result = train(config, tmp_path / "run", progress=reports.append)
    assert result.step == 1500 and [r.step for r in reports] == [500, 1000, 1500]
    assert reports[-1].loss < reports[0].loss + 0.05
    restored = Run(tmp_path / "run").restore()
    samples = ddpm_sample(
        lambda x, t: restored.model(x, t), restored.objective.diffusion, (2000, 2), seed=0
    ).samples
    points = restored.normalizer.to_data(samples.numpy())
    angles = 2 * np.pi * np.arange(8) / 8
    centers = 4 * np.stack([np.cos(angles), np.sin(angles)], 1) / math.sqrt(2)
    distance = np.sqrt(((points[:, None, :] - centers[None]) ** 2).sum(-1))
    # The data: 8 modes of std 0.07 per axis, equal weights. 1,500 steps of a small MLP put
    # most samples within 0.5 of a mode and about 1/8 of them at each.
    assert np.mean(distance.min(1) < 0.5) > 0.8
    share = np.bincount(distance.argmin(1), minlength=8) / len(points)
    assert share.min() > 0.08 and share.max() < 0.17, share
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3 and '"images_per_sec"' in lines[0]
    assert list((tmp_path / "run" / "tensorboard").iterdir())


def test_ema_follows_its_definition_and_is_what_a_restored_sampler_uses(eight, tmp_path):
    decay = 0.8
    config = config_preset(
        "toy-ddpm",
        data_dir=eight,
        network="mlp-tiny",
        num_steps=5,
        checkpoint_every=5,
        log_every=1,
        ema_decay=decay,
        learning_rate=1e-2,
    )
    trainer = Trainer(config, tmp_path / "run")
    expected = [w.numpy().copy() for w in trainer.model.trainable_variables]
    for k in range(5):
        trainer.run(max_steps=1)
        current = [w.numpy() for w in trainer.model.trainable_variables]
        rate = min(decay, (1 + k) / (10 + k))  # the EMA warm-up, on by default
        expected = [rate * e + (1 - rate) * w for e, w in zip(expected, current, strict=True)]
    for average, value in zip(trainer.ema.averages, expected, strict=True):
        np.testing.assert_allclose(average.numpy(), value, rtol=1e-5, atol=1e-7)
    # The EMA differs from the raw weights, and the restored model carries the EMA.
    assert any(
        not np.allclose(a.numpy(), w.numpy())
        for a, w in zip(trainer.ema.averages, trainer.model.trainable_variables, strict=True)
    )
    restored = Run(tmp_path / "run").restore()
    for weight, average in zip(
        restored.model.trainable_variables, trainer.ema.averages, strict=True
    ):
        np.testing.assert_array_equal(weight.numpy(), average.numpy())


def test_divergence_stops_with_the_step_and_keeps_the_last_good_checkpoint(eight, tmp_path):
    config = config_preset(
        "toy-ddpm", data_dir=eight, network="mlp-tiny", num_steps=4, checkpoint_every=2, log_every=1
    )
    train(config, tmp_path / "run")
    checkpoints = tmp_path / "run" / "checkpoints"
    before = _mtimes(checkpoints)
    trainer = Trainer(config.replace(num_steps=50), tmp_path / "run")
    real_losses = trainer.objective.losses
    trainer.objective.losses = lambda *args, **kw: (
        real_losses(*args, **kw) * float("nan")
    )  # a poisoned batch
    trainer._train_step = trainer._make_train_step()
    with pytest.raises(
        TrainingDiverged,
        match=r"^step 4: loss or gradient is NaN/Inf .* last good checkpoint is step 4",
    ):
        trainer.run()
    assert _mtimes(checkpoints) == before and committed_steps(checkpoints) == [2, 4]
    restored = Run(tmp_path / "run").restore()
    assert restored.step == 4 and all(
        np.all(np.isfinite(w.numpy())) for w in restored.model.trainable_variables
    )


def test_run_directory_of_another_config_is_refused_untouched(eight, tmp_path):
    config = config_preset(
        "toy-ddpm", data_dir=eight, network="mlp-tiny", num_steps=3, checkpoint_every=3
    )
    train(config, tmp_path / "run")
    before = _mtimes(tmp_path / "run" / "checkpoints")
    with pytest.raises(
        ConfigError, match=r"belongs to another config \(fields differ: \['optim.learning_rate'\]\)"
    ):
        train(config.replace(learning_rate=0.5), tmp_path / "run")
    # Another model family is named as such (the flows' `model` picks it).
    with pytest.raises(ConfigError, match=r"trains objective 'ddpm', this config 'edm'; resume"):
        train(config.replace(objective="edm"), tmp_path / "run")
    assert _mtimes(tmp_path / "run" / "checkpoints") == before
    # Mixed float16 adds a loss scale to the optimizer's state, which this run's checkpoints do
    # not have.
    with pytest.raises(ConfigError, match=r"fields differ: \['execution.precision'\]"):
        train(config.replace(precision="mixed_float16", num_steps=4), tmp_path / "run")
    assert _mtimes(tmp_path / "run" / "checkpoints") == before
    # Resumable fields may change: more steps continue the same run, here in mixed bfloat16,
    # which checkpoints the same float32 state.
    assert (
        train(config.replace(num_steps=4, precision="mixed_bfloat16"), tmp_path / "run").step == 4
    )
    assert train(config.replace(num_steps=5), tmp_path / "run").step == 5
    # A run directory written before a field existed trained with its default: it resumes, and
    # a value other than that default is still refused.
    path = tmp_path / "run" / "config.json"
    record = json.loads(path.read_text())
    for section, field in (
        ("optim", "lr_schedule"),
        ("model", "loss_weighting"),
        ("network", "num_classes"),
        ("network", "label_dropout"),
    ):
        del record["config"][section][field]
    path.write_text(json.dumps(record))
    assert train(config.replace(num_steps=6), tmp_path / "run").step == 6
    with pytest.raises(
        ConfigError, match=r"fields differ: \['optim.decay_steps', 'optim.lr_schedule'\]"
    ):
        train(config.replace(lr_schedule="cosine", decay_steps=9), tmp_path / "run")


def test_class_conditioning_needs_labels_within_its_classes(mnist, tmp_path):
    """Checked before the run directory exists: a dataset without labels, and labels beyond
    num_classes (the mnist digits span 0..9), are refused naming the field."""
    roll = tmp_path / "roll"
    prepare_dataset(DatasetSpec.create("swiss_roll", n=500), roll)
    config = config_preset("toy-ddpm", data_dir=str(roll), network="mlp-tiny", num_classes=8)
    with pytest.raises(ConfigError, match=r"^network.num_classes: .* has no labels"):
        Trainer(config, tmp_path / "a")
    config = config_preset("mnist-ddpm-tiny", data_dir=mnist, num_classes=5)
    with pytest.raises(
        ConfigError, match=r"^network.num_classes: 5 classes, but the labels .* span 0\.\.9"
    ):
        Trainer(config, tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_checkpoint_from_another_architecture_is_refused_untouched(eight, tmp_path):
    tiny = config_preset(
        "toy-ddpm", data_dir=eight, network="mlp-tiny", num_steps=2, checkpoint_every=2
    )
    small = tiny.replace(network="mlp-small")
    train(tiny, tmp_path / "tiny")
    train(small, tmp_path / "small")
    checkpoints = tmp_path / "small" / "checkpoints"
    for path in (tmp_path / "tiny" / "checkpoints").glob("ckpt-2.*"):
        shutil.copy(path, checkpoints / path.name.replace("ckpt-2", "ckpt-9"))
    # Its marker as a run of the other architecture would have written it at step 9 (intact:
    # checksums of its own files), so what is refused is the architecture, not damage.
    marker = checkpoints / "ckpt-9.json"
    marker.write_text(marker.read_text().replace("ckpt-2.", "ckpt-9."))
    before = _mtimes(checkpoints)
    with pytest.raises(CheckpointMismatch, match="ckpt-9: does not match this model"):
        Trainer(small, tmp_path / "small")
    with pytest.raises(CheckpointMismatch, match="ckpt-9: does not match this model"):
        Run(tmp_path / "small").restore()
    assert _mtimes(checkpoints) == before


def test_mixed_precision_and_xla_run(mnist, eight, tmp_path):
    """Mixed bfloat16 on the U-Net (its convolutions and normalisations in bfloat16); XLA on the
    MLP: the engine compiles the step the same way for any network, and compiling the U-Net
    took 9.9 s against 2.3 (XLA's speed on convolutions is measured in benchmarks/)."""
    bf16 = config_preset(
        "mnist-ddpm-tiny",
        data_dir=mnist,
        batch_size=8,
        num_steps=3,
        log_every=1,
        checkpoint_every=3,
        network_overrides=ONE_LEVEL_UNET,
        precision="mixed_bfloat16",
    )
    xla = config_preset(
        "toy-ddpm",
        data_dir=eight,
        network="mlp-tiny",
        num_steps=3,
        log_every=1,
        checkpoint_every=3,
        jit_compile=True,
    )
    for name, config in {"bf16": bf16, "xla": xla}.items():
        reports = []
        train(config, tmp_path / name, progress=reports.append)
        assert len(reports) == 3 and all(np.isfinite(r.loss) for r in reports)


def test_warm_start_copies_the_donor_ema_into_weights_and_average(eight, tmp_path):
    small = dict(data_dir=eight, network="mlp-tiny", log_every=10, checkpoint_every=20)
    train(config_preset("toy-ddpm", num_steps=20, **small), tmp_path / "donor")
    donor = Run(tmp_path / "donor").restore(20)

    warm = Trainer(
        config_preset("toy-ddpm", num_steps=5, init_from=f"{tmp_path / 'donor'}@20", **small),
        tmp_path / "warm",
    )
    assert int(warm.step.numpy()) == 0 and warm.optimizer.iterations.numpy() == 0
    for ours, average, theirs in zip(
        warm.model.trainable_variables,
        warm.ema.averages,
        donor.model.trainable_variables,
        strict=True,
    ):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
        np.testing.assert_array_equal(average.numpy(), theirs.numpy())
    cold = Trainer(config_preset("toy-ddpm", num_steps=5, **small), tmp_path / "cold")
    assert not np.array_equal(
        cold.model.trainable_variables[0].numpy(), warm.model.trainable_variables[0].numpy()
    )

    # Once the warm run has its own checkpoint it resumes from that, not from the donor again.
    warm.run()
    resumed = Trainer(warm.config, tmp_path / "warm")
    assert int(resumed.step.numpy()) == 5

    with pytest.raises(ConfigError, match="init_from"):
        config_preset("toy-ddpm", init_from="no-step-here", **small)
    with pytest.raises(ConfigError, match="no complete checkpoint 7"):
        Trainer(
            config_preset("toy-ddpm", init_from=f"{tmp_path / 'donor'}@7", **small),
            tmp_path / "missing",
        )
    with pytest.raises(CheckpointMismatch):
        Trainer(
            config_preset(
                "toy-ddpm",
                init_from=f"{tmp_path / 'donor'}@20",
                **{**small, "network": "mlp-small"},
            ),
            tmp_path / "other-architecture",
        )


def replica_agreement(data_dir: str, root: pathlib.Path) -> list[int]:
    """Trains the same 6 steps on 1, 2 and (with 4 logical devices) 4 replicas and checks them
    against each other; returns the replica counts checked. Run by the test below in a process
    of its own with 4 logical CPUs (this process has 2, and a second MirroredStrategy with the
    default reduction in one process clashes with the first)."""
    config = config_preset(
        "toy-ddpm",
        data_dir=data_dir,
        network="mlp-small",
        batch_size=16,
        num_steps=6,
        log_every=1,
        checkpoint_every=6,
        grad_clip_norm=0.5,
    )
    counting = CountingReduce()
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    strategies = {
        1: tf.distribute.OneDeviceStrategy(devices[0]),
        2: tf.distribute.MirroredStrategy(devices[:2], cross_device_ops=counting),
    }
    if len(devices) >= 4:
        strategies[4] = tf.distribute.MirroredStrategy(devices[:4])
    weights, reports = {}, {}
    for replicas, strategy in strategies.items():
        reports[replicas] = []
        train(config, root / str(replicas), strategy=strategy, progress=reports[replicas].append)
        weights[replicas] = [v.numpy() for v in Run(root / str(replicas)).restore().model.weights]
    # The step is traced once: every gradient reduced once, and the loss (before the change,
    # each gradient twice).
    parameters = sum(
        v.shape.num_elements() for v in Run(root / "1").restore().model.trainable_variables
    )
    assert counting.elements == parameters + 1, (counting.elements, parameters)
    for replicas in strategies:
        for a, b in zip(weights[replicas], weights[1], strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        assert len(reports[replicas]) == 6
        np.testing.assert_allclose(
            [r.loss for r in reports[replicas]], [r.loss for r in reports[1]], rtol=2e-6
        )
        np.testing.assert_allclose(
            [r.grad_norm for r in reports[replicas]], [r.grad_norm for r in reports[1]], rtol=5e-6
        )
    return list(strategies)


def test_one_gradient_all_reduce_per_step_and_1_2_4_replicas_agree(eight, tmp_path):
    """On two logical devices the traced step reduces each gradient once, and the loss: the
    elements reduced are the parameter count + 1 (before: twice the parameter count + 1, Keras's
    optimizer reducing the already reduced gradients again; 22,723 elements for the 11,361
    parameters of a one-level U-Net). The weights after 6 steps at the same global batch on 1, 2
    and 4 replicas agree to float32 rounding, and so does every step on the way: the same
    batches, noise and clipped update (on that U-Net, measured: weights within 3e-8 on 4
    replicas, losses within 1.2e-7 relative, gradient norms within 3.7e-7). An MLP here: the
    U-Net's three traces on 4 replicas took 61 s, this 21 s. In a child process with 4
    logical CPUs."""
    code = (
        "import pathlib, sys\n"
        # The training worker's module keeps out, at its import, the packages Keras imports
        # and neither uses (2.8 s of TensorFlow's import); it loads nothing else.
        "import diffusion_lib.training.__main__\n"
        "import tensorflow as tf\n"
        "cpu = tf.config.list_physical_devices('CPU')[0]\n"
        "tf.config.set_logical_device_configuration(\n"
        "    cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(4)]\n"
        ")\n"
        "from tests.lib.training.test_engine import replica_agreement\n"
        "print('checked', replica_agreement(sys.argv[1], pathlib.Path(sys.argv[2])))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, eight, str(tmp_path)],
        cwd=pathlib.Path(__file__).resolve().parents[3],
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-6000:]
    assert done.stdout.strip().splitlines()[-1] == "checked [1, 2, 4]"


def test_the_gradients_are_all_reduced_in_packs_and_packing_changes_no_weight(
    eight, tmp_path, monkeypatch
):
    """Under TensorFlow's collective all-reduce on two logical devices (what
    MultiWorkerMirroredStrategy runs between hosts), `allreduce_buckets=4` sends the gradients
    in about 4 packs, the last variables first (the order the backward pass completes them),
    and trains the same weights bit for bit as one all-reduce; `allreduce_dtype="bfloat16"`
    sends the same elements and trains weights within bfloat16's rounding of them."""
    monkeypatch.setattr(engine, "MIN_PACK_BYTES", 0)  # packs of this small network's size
    devices = [d.name for d in tf.config.list_logical_devices("CPU")][:2]
    runs = {"one": (1, "float32"), "packed": (4, "float32"), "bfloat16": (4, "bfloat16")}
    packs, weights = {}, {}
    for name, (buckets, dtype) in runs.items():
        config = config_preset(
            "toy-ddpm",
            data_dir=eight,
            network="mlp-small",
            batch_size=16,
            num_steps=6,
            log_every=6,
            checkpoint_every=6,
            allreduce_buckets=buckets,
            allreduce_dtype=dtype,
        )
        collective, packs[name] = counting_collective(devices)
        strategy = tf.distribute.MirroredStrategy(devices, cross_device_ops=collective)
        train(config, tmp_path / name, strategy=strategy)
        weights[name] = [v.numpy() for v in Run(tmp_path / name).restore().model.weights]
    variables = Run(tmp_path / "one").restore().model.trainable_variables
    sizes = [v.shape.num_elements() for v in variables]
    assert packs["one"] == [sum(sizes), 1]  # the gradients, then the loss
    assert 3 <= len(packs["packed"]) - 1 <= 5 and packs["packed"][-1] == 1
    assert sum(packs["packed"]) == sum(sizes) + 1
    # The first pack is the last variables': the backward pass completes them first.
    first, total = packs["packed"][0], 0
    for size in reversed(sizes):
        total += size
        if total >= first:
            break
    assert total == first
    assert packs["bfloat16"][:-1] == packs["packed"][:-1]  # by elements; half the bytes
    for a, b in zip(weights["packed"], weights["one"], strict=True):
        np.testing.assert_array_equal(a, b)
    differ = False
    for a, b in zip(weights["bfloat16"], weights["one"], strict=True):
        np.testing.assert_allclose(a, b, rtol=0.05, atol=2e-3)
        differ |= not np.array_equal(a, b)
    assert differ
