"""The one place that turns config strings into classes: plain dict registries.

Adding an objective (SigLIP, SimCLR, MoCo) is one entry in ``OBJECTIVES`` plus its model in
``MODELS``; nothing else in the trainer changes.
"""

from __future__ import annotations

from torch import nn

from vlcontrast.config import Config, ConfigError
from vlcontrast.models.clip import CLIP
from vlcontrast.objectives.base import Objective
from vlcontrast.objectives.clip import CLIPObjective

OBJECTIVES: dict[str, type[Objective]] = {"clip": CLIPObjective}
MODELS: dict[str, type[nn.Module]] = {"clip": CLIP}


def _lookup(registry: dict, name: str, key: str):
    if name not in registry:
        raise ConfigError(f"{key}: unknown value {name!r}; choose one of {', '.join(registry)}")
    return registry[name]


def build_model(cfg: Config) -> nn.Module:
    return _lookup(MODELS, cfg.loss.name, "loss.name")(cfg)


def build_objective(cfg: Config) -> Objective:
    return _lookup(OBJECTIVES, cfg.loss.name, "loss.name")()
