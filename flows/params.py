"""The flows' shared parameter types and the run-directory rule (plain Python, no Prefect state).

Parameters are flat and typed so the Prefect UI shows and validates each one, and so
`prefect deployment run ... --param steps=200` changes one field (a nested model passed with
--param would replace all of its fields).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from diffusion_lib.samplers import SAMPLERS
from tasks.presets import MODELS, PRESETS

# The choices come from the registries, so the UI's drop-downs list what exists.
Preset = Literal[tuple(PRESETS)]
Model = Literal[MODELS]
Sampler = Literal[tuple(SAMPLERS)]
Positive = Annotated[int, Field(gt=0)]
Minutes = Annotated[float, Field(gt=0, allow_inf_nan=False)]
# Classifier-free guidance weight w (samplers/spec.py): 0 is the conditional model alone.
Guidance = Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)]
# The noise levels (sigma, counted as a VE process counts it) that guidance is limited to.
Sigma = Annotated[float, Field(ge=0, allow_inf_nan=False)]
RunName = Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]


def default_run_name(preset: str, flow_run_name: str) -> str:
    """ "<preset>-<flow run name>": unique per flow run, so concurrent runs never share a directory."""
    return f"{preset}-{flow_run_name}"
