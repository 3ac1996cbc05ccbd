"""networks/config.py: the presets (DDPM's CIFAR-10 U-Net at 35.7M parameters) and the
validation of a NetworkConfig."""

import pytest

from diffusion_lib.networks import NetworkConfig, build_network, preset, preset_names


def test_presets_and_validation():
    assert {"mlp-tiny", "mlp-small", "unet-tiny", "unet-small", "unet-standard"} <= set(
        preset_names()
    )
    standard = build_network(
        preset("unet-standard", data_shape=(32, 32, 3), attn_resolutions=(16,))
    )
    assert 35_000_000 < standard.count_params() < 36_500_000  # DDPM's CIFAR-10 model: 35.7M
    with pytest.raises(ValueError, match="network preset must be one of"):
        preset("unet-huge")
    with pytest.raises(ValueError, match="dropout must be in"):
        preset("unet-tiny", dropout=1.5)
    with pytest.raises(ValueError, match="inverse_sigma' needs conditioning='log_sigma'"):
        NetworkConfig(family="mlp", output_scaling="inverse_sigma")
    with pytest.raises(ValueError, match="U-Net needs data_shape"):
        preset("unet-tiny", data_shape=(2,))
    with pytest.raises(ValueError, match="family must be one of"):
        NetworkConfig(family="transformer")
