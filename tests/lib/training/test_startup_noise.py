"""TensorFlow's start-up notices, told from real output: every pattern matches its notice and
nothing real; the cuInit line is noise only without an NVIDIA driver."""

from diffusion_lib.training.startup_noise import is_noise, noise_patterns

# As TensorFlow 2.21 prints them at every start on a machine without a GPU.
NOISE = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1795947380.030010    3044 port.cc:153] oneDNN custom operations are on. You may"
    " see slightly different numerical results",
    "I0000 00:00:1795947380.030386    3044 cudart_stub.cc:31] Could not find cuda drivers on your"
    " machine, GPU will not be used.",
]
CUINIT = (
    "E0000 00:00:1795947384.267764    3044 cuda_platform.cc:52] failed call to cuInit: INTERNAL:"
    " CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)"
)
REAL = [
    "E0000 00:00:1795947384.267764    3044 some_kernel.cc:12] a real error",
    "UserWarning: a real warning",
]


def test_every_pattern_matches_its_notice_and_nothing_real():
    patterns = noise_patterns(driver_present=False)
    for line in [*NOISE, CUINIT]:
        assert is_noise(line, patterns) and is_noise(line + "\n", patterns), line
    for line in REAL:
        assert not is_noise(line, patterns), line
    # With an NVIDIA driver, a failing cuInit is a real failure.
    with_driver = noise_patterns(driver_present=True)
    assert not is_noise(CUINIT, with_driver)
    assert all(is_noise(line, with_driver) for line in NOISE)
