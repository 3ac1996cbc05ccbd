"""`SamplerSpec`: which registered sampler, with which settings, as one frozen, validated value.

Evaluation, sample sets and the sampling GIF all take one; its settings are exactly the ones the
sampler registered (defaults filled in, unknown names and out-of-range values refused at once),
so the same setting has the same name everywhere:

    SamplerSpec.of("ddim", num_steps=100, eta=1.0)
    SamplerSpec.of("annealed_langevin", steps_per_level=3, step_lr=1.35e-5)
    SamplerSpec.from_dict({"name": "ddpm"})
    SamplerSpec.of("ddim", num_steps=100, eta=1.0, guidance=1.0)

`guidance` is the one setting every sampler takes: the weight w of classifier-free guidance
(Ho & Salimans 2022) for a class-conditional run, whose network output becomes
(1 + w) * conditional - w * unconditional (w = 0: the conditional model alone). With it,
`guidance_sigma_min` / `guidance_sigma_max` limit guidance to the steps whose noise level sigma
lies in [min, max] (Kynkaanniemi et al. 2024, "Applying Guidance in a Limited Interval"); the
other steps call the conditional model alone, once. sigma is the network's noise level in model
units, as a variance-exploding process counts it (NCSN's sigma; sqrt((1 - abar) / abar) for a
DDPM level; std / alpha for a VP SDE). These settings are kept only when they differ from their
defaults (no guidance, no bounds), so the spec of an unguided sampler reads as it always did.
Bounds without guidance are refused (they would limit nothing); `replace(guidance=0)` drops
them.

    SamplerSpec.of("ve_ancestral", guidance=0.5, guidance_sigma_min=0.5, guidance_sigma_max=10)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from diffusion_lib.samplers.base import SAMPLERS, SamplerInfo, Setting, get_sampler

# Every sampler's settings, beside its own: classifier-free guidance and its interval.
GUIDANCE_SETTINGS = {
    "guidance": Setting(0.0, low=0.0, high=100.0),
    "guidance_sigma_min": Setting(0.0, low=0.0),
    "guidance_sigma_max": Setting(math.inf, positive=True, finite=False),
}
_BOUNDS = ("guidance_sigma_min", "guidance_sigma_max")


@dataclasses.dataclass(frozen=True)
class SamplerSpec:
    name: str
    settings: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def of(cls, name: str, **settings) -> SamplerSpec:
        """The spec of sampler `name` with `settings` (the rest at the sampler's defaults).
        Raises ValueError naming the sampler or the setting that is wrong."""
        return cls(name, _checked(name, settings))

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> SamplerSpec:
        """From {"name": ..., <setting>: ...} (what `to_dict` writes)."""
        if not isinstance(record, Mapping) or "name" not in record:
            raise ValueError(f"a sampler spec needs a 'name', got {record!r}")
        return cls.of(**record)

    def __post_init__(self):
        if self.settings != _checked(self.name, dict(self.settings)):
            raise ValueError("build a SamplerSpec with SamplerSpec.of(name, **settings)")

    @property
    def info(self) -> SamplerInfo:
        return get_sampler(self.name)

    @property
    def family(self) -> str:
        return self.info.family

    def get(self, key: str):
        return dict(self.settings)[key]

    @property
    def guidance(self) -> float:
        """Classifier-free guidance weight w (0: none)."""
        return dict(self.settings).get("guidance", 0.0)

    @property
    def guidance_interval(self) -> tuple[float, float]:
        """(sigma_min, sigma_max): the noise levels where guidance applies ((0, inf): all)."""
        settings = dict(self.settings)
        return tuple(settings.get(key, GUIDANCE_SETTINGS[key].default) for key in _BOUNDS)

    def kwargs(self) -> dict[str, Any]:
        """The sampler's own settings as the sampler function's keyword arguments."""
        return {key: value for key, value in self.settings if key not in GUIDANCE_SETTINGS}

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **dict(self.settings)}

    def replace(self, **changes) -> SamplerSpec:
        """This spec with `changes`; turning guidance off drops its interval too (bounds given
        in `changes` are kept, and refused by name when nothing is guided)."""
        settings = {**dict(self.settings), **changes}
        if not settings.get("guidance"):
            for key in set(_BOUNDS) - set(changes):
                settings.pop(key, None)
        return SamplerSpec.of(self.name, **settings)


def _checked(name: str, settings: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    if not isinstance(name, str) or name not in SAMPLERS:
        raise ValueError(f"sampler must be one of {sorted(SAMPLERS)}, got {name!r}")
    info = SAMPLERS[name]
    unknown = sorted(set(settings) - set(info.settings) - set(GUIDANCE_SETTINGS))
    if unknown:
        raise ValueError(
            f"sampler {name!r} has no setting {', '.join(unknown)}; its settings: "
            f"{sorted(info.settings) or 'none'}, and every sampler's "
            f"{', '.join(GUIDANCE_SETTINGS)}"
        )
    checked = [
        (key, setting.check(key, settings.get(key, setting.default)))
        for key, setting in info.settings.items()
    ]
    universal = {
        key: setting.check(key, settings.get(key, setting.default))
        for key, setting in GUIDANCE_SETTINGS.items()
    }
    low, high = universal["guidance_sigma_min"], universal["guidance_sigma_max"]
    if low >= high:
        raise ValueError(
            f"guidance_sigma_min must be below guidance_sigma_max, got {low} and {high}"
        )
    bounded = [key for key in _BOUNDS if universal[key] != GUIDANCE_SETTINGS[key].default]
    if bounded and not universal["guidance"]:
        raise ValueError(
            f"{' and '.join(bounded)} limit guidance to some noise levels: set guidance > 0 too "
            "(or leave them out)"
        )
    checked += [
        (key, value) for key, value in universal.items() if value != GUIDANCE_SETTINGS[key].default
    ]
    return tuple(sorted(checked))
