"""Training objectives: small plug-ins that turn a batch into ``{"loss", "metrics"}``.

The training loop calls ``objective(model, batch)`` and ``objective.after_step(model, step)`` and
never branches on which objective it runs. ``OBJECTIVES`` is the registry: a new objective
(SimCLR, MoCo, ...) is one class, one entry here and, when it has settings, one dataclass in
``objective_settings.py`` plugged into ``config.ObjectiveConfig``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from vlcontrast.schema import ConfigError

if TYPE_CHECKING:
    from vlcontrast.objectives.base import Objective


class _Registry(dict):
    """name -> objective class, each imported on first use ("module:Class" until then), so
    reading a config or a model imports no objective and no loss."""

    def __getitem__(self, name: str) -> Any:
        value = super().__getitem__(name)
        if isinstance(value, str):
            module, cls = value.split(":")
            value = getattr(importlib.import_module(f"vlcontrast.objectives.{module}"), cls)
            self[name] = value
        return value


OBJECTIVES: dict[str, Any] = _Registry(
    clip="clip:CLIPObjective",
    siglip="siglip:SigLIPObjective",
    simclr="simclr:SimCLRObjective",
    moco="moco:MoCoObjective",
    mocov3="moco:MoCoV3Objective",
    byol="byol:BYOLObjective",
    simsiam="byol:SimSiamObjective",
    barlow_twins="barlow:BarlowTwinsObjective",
    supcon="supcon:SupConObjective",
    slip="slip:SLIPObjective",
)


def objective_class(name: str) -> type[Objective]:
    if name not in OBJECTIVES:
        raise ConfigError(
            f"objective.name: unknown value {name!r}; choose one of {', '.join(OBJECTIVES)}"
        )
    return OBJECTIVES[name]


def build_objective(section: Any):
    """The objective ``section.name`` (``config.ObjectiveConfig``) with its own settings."""
    cls = objective_class(section.name)
    return cls(getattr(section, section.name, None))
