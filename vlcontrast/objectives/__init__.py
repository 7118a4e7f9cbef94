"""Training objectives: small plug-ins that turn a batch into ``{"loss", "metrics"}``.

An objective is the task: once ``setup(model, cfg, global_batch)`` ran it owns the shared model,
its own heads and its state (``objectives/base.py``). The training loop calls ``task(batch)``
(through DDP), ``task.loss(outputs, batch)`` and ``task.after_step(step)`` and never branches on
which objective it runs. ``OBJECTIVES`` is the registry: a new objective (SimCLR, MoCo, ...) is
one class, one entry here and, when it has settings, one dataclass in ``objective_settings.py``
plugged into ``config.ObjectiveConfig``. An entry is ``"module:Class"`` under
``vlcontrast.objectives`` or a full ``"package.module:Class"`` path.
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
            package = module if "." in module else f"vlcontrast.objectives.{module}"
            value = getattr(importlib.import_module(package), cls)
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
    metric="metric:MetricObjective",
    slip="slip:SLIPObjective",
    text_pairs="text_pairs:TextPairsObjective",
    finetune="finetune:FinetuneObjective",
    swav="swav:SwAVObjective",
    dino="dino:DINOObjective",
    densecl="densecl:DenseCLObjective",
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
