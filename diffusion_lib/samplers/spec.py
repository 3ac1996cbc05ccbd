"""`SamplerSpec`: which registered sampler, with which settings, as one frozen, validated value.

Evaluation, sample sets and the sampling GIF all take one; its settings are exactly the ones the
sampler registered (defaults filled in, unknown names and out-of-range values refused at once),
so the same setting has the same name everywhere:

    SamplerSpec.of("ddim", num_steps=100, eta=1.0)
    SamplerSpec.of("annealed_langevin", steps_per_level=3, step_lr=1.35e-5)
    SamplerSpec.from_dict({"name": "ddpm"})
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from diffusion_lib.samplers.base import SAMPLERS, SamplerInfo, get_sampler


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

    def kwargs(self) -> dict[str, Any]:
        """The settings as the sampler function's keyword arguments."""
        return dict(self.settings)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **dict(self.settings)}

    def replace(self, **changes) -> SamplerSpec:
        return SamplerSpec.of(self.name, **{**dict(self.settings), **changes})


def _checked(name: str, settings: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    if not isinstance(name, str) or name not in SAMPLERS:
        raise ValueError(f"sampler must be one of {sorted(SAMPLERS)}, got {name!r}")
    info = SAMPLERS[name]
    unknown = sorted(set(settings) - set(info.settings))
    if unknown:
        raise ValueError(
            f"sampler {name!r} has no setting {', '.join(unknown)}; its settings: "
            f"{sorted(info.settings) or 'none'}"
        )
    return tuple(
        sorted(
            (key, setting.check(key, settings.get(key, setting.default)))
            for key, setting in info.settings.items()
        )
    )
