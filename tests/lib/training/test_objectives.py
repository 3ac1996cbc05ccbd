"""training/objectives.py: each score objective (NCSN, DSM, SSM) trains to finite losses and
restores as a sigma-conditioned network."""

import numpy as np
import pytest

from diffusion_lib.run import Run
from diffusion_lib.training import (
    config_preset,
    train,
)


@pytest.mark.parametrize("objective", ["ncsn", "dsm", "ssm"])
def test_score_objectives_train(eight, tmp_path, objective):
    config = config_preset(
        "toy-ncsn",
        data_dir=eight,
        network="mlp-tiny",
        objective=objective,
        num_steps=30,
        log_every=10,
        checkpoint_every=30,
    )
    reports = []
    train(config, tmp_path / "run", progress=reports.append)
    assert all(np.isfinite(r.loss) for r in reports)
    restored = Run(tmp_path / "run").restore()
    assert restored.model.conditioning == "log_sigma"
