"""networks/init.py: initial weights are a function of the config and the seed, and the
deliberate constants survive."""

import numpy as np
import pytest

from diffusion_lib.networks import build_network, preset


def test_initial_weights_are_a_function_of_config_and_seed():
    cfg = preset("unet-tiny")
    a, b, c = build_network(cfg, seed=1), build_network(cfg, seed=1), build_network(cfg, seed=2)
    for wa, wb in zip(a.weights, b.weights, strict=True):
        np.testing.assert_array_equal(wa.numpy(), wb.numpy())
    assert any(
        not np.array_equal(wa.numpy(), wc.numpy())
        for wa, wc in zip(a.weights, c.weights, strict=True)
    )
    # Deliberate constants survive: the zero-initialised output layer and GroupNorm's gamma.
    np.testing.assert_array_equal(a.conv_out.kernel.numpy(), 0.0)
    np.testing.assert_array_equal(a.norm_out.gamma.numpy(), 1.0)
    kernel = a.conv_in.kernel.numpy()
    limit = np.sqrt(6.0 / (9 * 1 + 9 * 8))
    assert np.abs(kernel).max() <= limit and kernel.std() == pytest.approx(
        limit / np.sqrt(3), rel=0.3
    )
