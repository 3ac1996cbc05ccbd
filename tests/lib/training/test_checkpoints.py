"""training/checkpoints.py: which checkpoints are kept (the last n and every kth), that one
without its commit marker does not exist, and that a damaged one is found by its checksums, set
aside and trained again from the newest good one."""

import json
import pathlib

import numpy as np
import pytest

from diffusion_lib.run import Run
from diffusion_lib.training import (
    DamagedCheckpoint,
    Trainer,
    committed_steps,
    config_preset,
    train,
)
from diffusion_lib.training.checkpoints import CheckpointStore

pytestmark = pytest.mark.cost(30)


def test_checkpoints_keep_the_last_n_and_every_kth(eight, tmp_path):
    config = config_preset(
        "toy-ddpm",
        data_dir=eight,
        network="mlp-tiny",
        num_steps=12,
        checkpoint_every=1,
        keep_last=2,
        keep_every=5,
        log_every=4,
    )
    train(config, tmp_path / "run")
    assert committed_steps(tmp_path / "run" / "checkpoints") == [5, 10, 11, 12]
    # A checkpoint whose marker is missing (a crash between data and marker) does not exist.
    (tmp_path / "run" / "checkpoints" / "ckpt-12.json").unlink()
    assert committed_steps(tmp_path / "run" / "checkpoints") == [5, 10, 11]
    assert Run(tmp_path / "run").restore().step == 11


def _config(eight, **fields):
    return config_preset(
        "toy-ddpm",
        data_dir=eight,
        network="mlp-tiny",
        **{"num_steps": 30, "checkpoint_every": 10, "log_every": 5, "keep_last": 3, **fields},
    )


def _weights(run_dir):
    return [v.numpy() for v in Run(run_dir).restore().model.trainable_variables]


def _flip_a_byte(path: pathlib.Path, offset: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_a_damaged_latest_checkpoint_is_set_aside_and_training_repairs_the_run(
    eight, tmp_path, damage
):
    """One flipped bit, a truncated or a missing data file in ckpt-30 of a finished run: the
    restore fails verification by name, training again falls back to ckpt-20 (a warning says
    so; the damaged files go to damaged/), retrains steps 21-30, and ends with weights equal
    to the uninterrupted run's, bit for bit, and a training log with each step once."""
    train(_config(eight), tmp_path / "clean")
    run_dir = tmp_path / "run"
    train(_config(eight), run_dir)
    checkpoints = run_dir / "checkpoints"
    data = sorted(checkpoints.glob("ckpt-30.data-*"))[0]
    if damage == "flip":
        _flip_a_byte(data)
    elif damage == "truncate":
        data.write_bytes(data.read_bytes()[:-7])
    else:
        data.unlink()
    with pytest.raises(DamagedCheckpoint, match=rf"{data.name}: (missing|its bytes differ)"):
        Run(run_dir).restore(30)
    warnings = []
    trainer = Trainer(_config(eight), run_dir, warn=warnings.append)
    assert int(trainer.step.numpy()) == 20
    assert len(warnings) == 1 and "ckpt-30 is damaged" in warnings[0]
    assert committed_steps(checkpoints) == [10, 20]
    (aside,) = (checkpoints / "damaged").iterdir()
    assert (aside / "ckpt-30.json").is_file() and (aside / "ckpt-30.index").is_file()
    trainer.run()
    assert committed_steps(checkpoints) == [10, 20, 30]
    for mine, reference in zip(_weights(run_dir), _weights(tmp_path / "clean"), strict=True):
        np.testing.assert_array_equal(mine, reference)
    steps = [
        json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == [5, 10, 15, 20, 25, 30]


def test_damage_in_every_checkpoint_starts_over_and_pruning_keeps_the_last_good_one(
    eight, tmp_path
):
    run_dir = tmp_path / "run"
    train(_config(eight, num_steps=20), run_dir)
    checkpoints = run_dir / "checkpoints"
    for step in (10, 20):
        _flip_a_byte(checkpoints / f"ckpt-{step}.index", 40)
    warnings = []
    trainer = Trainer(_config(eight, num_steps=20), run_dir, warn=warnings.append)
    assert int(trainer.step.numpy()) == 0 and len(warnings) == 2
    # Pruning: when every checkpoint it would keep is damaged (after it was written), the
    # newest good one stays; once a good one is among those kept, the rest go.
    store = CheckpointStore(checkpoints, trainer.checkpoint, keep_last=3)
    for step in (4, 5, 6):
        store.save(step, {})
    for step in (5, 6):
        _flip_a_byte(checkpoints / f"ckpt-{step}.index", 40)
    store = CheckpointStore(checkpoints, trainer.checkpoint, keep_last=2)
    store.prune()
    assert committed_steps(checkpoints) == [4, 5, 6]
    store.save(7, {})
    assert committed_steps(checkpoints) == [6, 7]
