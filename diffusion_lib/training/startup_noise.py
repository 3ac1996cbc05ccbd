"""What TensorFlow prints at every start with nothing for the user to do: the console of a flow
leaves these lines out (flows/console.py), and a failed training worker's reason is never one
of them (diffusion_lib/training/launch.py).

TensorFlow 2.21 writes its start-up notices through absl before logging is initialised, so
TF_CPP_MIN_LOG_LEVEL does not reach them; they come from native code straight to file
descriptor 2.
"""

from __future__ import annotations

import pathlib
import re

NVIDIA_DRIVER = pathlib.Path("/proc/driver/nvidia/version")

# Notices every start prints, with nothing for the user to do.
STARTUP_NOISE = (
    r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$",
    r"^I0000 [^\]]* port\.cc:\d+\] oneDNN custom operations are on",
    r"^I0000 [^\]]* cudart_stub\.cc:\d+\] Could not find cuda drivers on your machine",
    r"^I0000 [^\]]* cpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized",
    r"^To enable the following instructions: .* rebuild TensorFlow",
)
# Without an NVIDIA driver, CUDA's "no device" (303) is TensorFlow looking for a GPU that cannot
# exist; with a driver it is a real failure and is kept.
NO_DRIVER_CUINIT = r"^E0000 [^\]]* cuda_platform\.cc:\d+\] failed call to cuInit: .*\(303\)$"


def noise_patterns(driver_present: bool | None = None) -> list[re.Pattern]:
    if driver_present is None:
        driver_present = NVIDIA_DRIVER.exists()
    patterns = list(STARTUP_NOISE) + ([] if driver_present else [NO_DRIVER_CUINIT])
    return [re.compile(p) for p in patterns]


def is_noise(line: str, patterns: list[re.Pattern]) -> bool:
    return any(p.search(line.rstrip("\n")) for p in patterns)
