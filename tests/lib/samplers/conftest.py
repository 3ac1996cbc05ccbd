"""The sampler tests' shared diffusion: DDPM's linear schedule, 1,000 steps."""

import pytest

from diffusion_lib.diffusion import GaussianDiffusion
from diffusion_lib.schedules import beta_schedule


@pytest.fixture(scope="module")
def diffusion():
    return GaussianDiffusion(beta_schedule("linear", 1000, 1e-4, 0.02))
