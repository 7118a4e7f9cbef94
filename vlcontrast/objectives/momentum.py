"""The momentum (EMA) encoder that MoCo and BYOL keep beside the trained model.

It is a submodule of the objective, so its weights travel in checkpoints with the objective's
state and come back exactly on resume; it is created in ``setup`` (before a resume restores
it) as a copy of the model, takes no gradient and is never seen by the optimizer or DDP.
``after_step`` moves it towards the model: ``theta_k <- m theta_k + (1 - m) theta_q``, with
``m`` fixed (MoCo v2) or on BYOL's cosine schedule from ``momentum`` to ``momentum_end``.
"""

from __future__ import annotations

import copy

from torch import nn

from vlcontrast import distributed
from vlcontrast.losses.ssl import cosine_momentum, momentum_update
from vlcontrast.objectives.base import Objective
from vlcontrast.schema import ConfigError


class MomentumObjective(Objective):
    """An objective with a momentum copy of the model (``self.target``)."""

    needs_predictor = False

    def setup(self, model: nn.Module, cfg, global_batch: int) -> None:
        super().setup(model, cfg, global_batch)
        if cfg.train.fsdp and distributed.world_size() > 1:
            raise ConfigError(
                f"train.fsdp: objective {cfg.objective.name!r} keeps a momentum copy of the "
                f"model, which FSDP does not shard here; train it with DDP (train.fsdp=false: "
                f"the image towers of configs/ssl fit one device)"
            )
        bare = self.unwrap(model)
        if self.needs_predictor and getattr(bare, "predictor", None) is None:
            raise ConfigError(
                f"model.predictor_hidden: objective {cfg.objective.name!r} predicts the target "
                f"with a predictor MLP; set its width, e.g. model.predictor_hidden=4096"
            )
        self.target = copy.deepcopy(bare)
        self.target.requires_grad_(False)
        self.total_steps = int(cfg.train.steps)

    def momentum(self, step: int) -> float:
        start, end = self.cfg.momentum, getattr(self.cfg, "momentum_end", None)
        return start if end is None else cosine_momentum(start, end, step, self.total_steps)

    def update_target(self, model: nn.Module, step: int) -> None:
        """After optimizer step ``step`` (1-based): the schedule at ``step - 1`` steps done, as
        BYOL's and MoCo v3's code index it (the first update uses ``momentum`` itself)."""
        momentum_update(self.target, self.unwrap(model), self.momentum(step - 1))
