"""The momentum (EMA) encoder that MoCo and BYOL keep beside the trained model.

``self.target`` holds copies of the backbone and the projector (``target.model``,
``target.projector``; no predictor: BYOL's and MoCo v3's targets have none). It is part of the
task, so its weights travel in checkpoints with the task's state and come back exactly on
resume; it is created in ``setup`` (before a resume restores it), takes no gradient and is
never seen by the optimizer or DDP. ``after_step`` moves it towards the model:
``theta_k <- m theta_k + (1 - m) theta_q``, with ``m`` fixed (MoCo v2) or on BYOL's cosine
schedule from ``momentum`` to ``momentum_end``.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from vlcontrast import distributed
from vlcontrast.losses.ssl import cosine_momentum, momentum_update
from vlcontrast.objectives.image_task import ImageTask
from vlcontrast.schema import ConfigError


class MomentumObjective(ImageTask):
    """An image objective with a momentum copy of its encoder (``self.target``)."""

    def setup(self, model: nn.Module, cfg, global_batch: int) -> None:
        super().setup(model, cfg, global_batch)
        if cfg.train.fsdp and distributed.world_size() > 1:
            raise ConfigError(
                f"train.fsdp: objective {cfg.objective.name!r} keeps a momentum copy of the "
                f"model, which FSDP does not shard here; train it with DDP (train.fsdp=false: "
                f"the image towers of configs/ssl fit one device)"
            )
        self.target = copy.deepcopy(self.online())
        self.target.requires_grad_(False)
        self.total_steps = int(cfg.train.steps)

    def online(self) -> nn.ModuleDict:
        """The encoder the target follows, parameter for parameter (not registered twice)."""
        return nn.ModuleDict({"model": self.model, "projector": self.projector})

    @torch.no_grad()
    def target_embed(self, images: torch.Tensor) -> torch.Tensor:
        """The momentum encoder's unit-norm projection of one view: (B, D)."""
        features = self.target["model"](images=images)["img_feat"]
        return F.normalize(self.target["projector"](features), dim=-1)

    def momentum(self, step: int) -> float:
        start, end = self.cfg.momentum, getattr(self.cfg, "momentum_end", None)
        return start if end is None else cosine_momentum(start, end, step, self.total_steps)

    def update_target(self, step: int) -> None:
        """After optimizer step ``step`` (1-based): the schedule at ``step - 1`` steps done, as
        BYOL's and MoCo v3's code index it (the first update uses ``momentum`` itself)."""
        momentum_update(self.target, self.online(), self.momentum(step - 1))

    def after_step(self, step: int) -> None:
        self.update_target(step)
