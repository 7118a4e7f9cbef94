"""Barlow Twins (Zbontar et al. 2021): make the cross-correlation of the two views' projections
the identity. The statistics are taken over the global batch with differentiable all-reduces
(``losses/ssl.py:barlow_twins_loss``), so the gradient is exact on any number of ranks. Each
view goes through the encoder alone, as the reference code does (``z1 = projector(backbone(y1))``),
so batch norm normalises over one view."""

from __future__ import annotations

from typing import Any

import torch

from vlcontrast.losses.ssl import barlow_twins_loss
from vlcontrast.objective_settings import BarlowTwinsConfig
from vlcontrast.objectives.base import full, view
from vlcontrast.objectives.image_task import ImageTask


class BarlowTwinsObjective(ImageTask):
    def __init__(self, cfg: BarlowTwinsConfig | None = None):
        super().__init__()
        self.cfg = cfg if cfg is not None else BarlowTwinsConfig()

    def outputs(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        z_a, z_b = self.embed(view(batch, -2))["proj"], self.embed(view(batch, -1))["proj"]
        return {"z_a": z_a, "z_b": z_b}

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, Any]:
        loss = barlow_twins_loss(
            full(outputs["z_a"]), full(outputs["z_b"]), self.cfg.lambda_offdiag
        )
        return {"loss": loss, "metrics": {}}
