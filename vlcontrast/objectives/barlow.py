"""Barlow Twins (Zbontar et al. 2021): make the cross-correlation of the two views' projections
the identity. The statistics are taken over the global batch with differentiable all-reduces
(``losses/ssl.py:barlow_twins_loss``), so the gradient is exact on any number of ranks."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vlcontrast.losses.ssl import barlow_twins_loss
from vlcontrast.objective_settings import BarlowTwinsConfig
from vlcontrast.objectives.base import Objective, full, halves, two_views


class BarlowTwinsObjective(Objective):
    modalities = ("image",)
    views = 2

    def __init__(self, cfg: BarlowTwinsConfig | None = None):
        super().__init__()
        self.cfg = cfg if cfg is not None else BarlowTwinsConfig()

    def outputs(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        z_a, z_b = halves(
            model(images=two_views(batch, self.bn_groups))["img_proj"], self.bn_groups
        )
        return {"z_a": z_a, "z_b": z_b}

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, Any]:
        loss = barlow_twins_loss(
            full(outputs["z_a"]), full(outputs["z_b"]), self.cfg.lambda_offdiag
        )
        return {"loss": loss, "metrics": {}}
