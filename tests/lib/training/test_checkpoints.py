"""training/checkpoints.py: which checkpoints are kept (the last n and every kth), and that one
without its commit marker does not exist."""

from diffusion_lib.run import Run
from diffusion_lib.training import (
    committed_steps,
    config_preset,
    train,
)


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
