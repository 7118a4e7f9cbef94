"""Training objectives: small plug-ins that turn a batch into ``{"loss", "metrics"}``.

The training loop calls ``objective(model, batch)`` and ``objective.after_step(model, step)`` and
never branches on which objective it runs. ``OBJECTIVES`` is the registry: a new objective
(SimCLR, MoCo, ...) is one class, one entry here and, when it has settings, one dataclass beside
it plugged into ``config.ObjectiveConfig``.
"""

from __future__ import annotations

from typing import Any

from vlcontrast.objectives.barlow import BarlowTwinsObjective
from vlcontrast.objectives.base import Objective
from vlcontrast.objectives.byol import BYOLObjective, SimSiamObjective
from vlcontrast.objectives.clip import CLIPObjective
from vlcontrast.objectives.moco import MoCoObjective, MoCoV3Objective
from vlcontrast.objectives.siglip import SigLIPObjective
from vlcontrast.objectives.simclr import SimCLRObjective
from vlcontrast.objectives.slip import SLIPObjective
from vlcontrast.objectives.supcon import SupConObjective
from vlcontrast.schema import ConfigError

OBJECTIVES: dict[str, type[Objective]] = {
    "clip": CLIPObjective,
    "siglip": SigLIPObjective,
    "simclr": SimCLRObjective,
    "moco": MoCoObjective,
    "mocov3": MoCoV3Objective,
    "byol": BYOLObjective,
    "simsiam": SimSiamObjective,
    "barlow_twins": BarlowTwinsObjective,
    "supcon": SupConObjective,
    "slip": SLIPObjective,
}


def objective_class(name: str) -> type[Objective]:
    if name not in OBJECTIVES:
        raise ConfigError(
            f"objective.name: unknown value {name!r}; choose one of {', '.join(OBJECTIVES)}"
        )
    return OBJECTIVES[name]


def build_objective(section: Any) -> Objective:
    """The objective ``section.name`` (``config.ObjectiveConfig``) with its own settings."""
    cls = objective_class(section.name)
    return cls(getattr(section, section.name, None))


__all__ = ["OBJECTIVES", "CLIPObjective", "Objective", "SigLIPObjective", "build_objective"]
