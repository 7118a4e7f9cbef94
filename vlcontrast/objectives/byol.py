"""BYOL (Grill et al. 2020) and SimSiam (Chen & He 2021): predict one view's projection from the
other's, with no negatives; the target carries no gradient (stop-gradient).

BYOL's target is a momentum copy of the backbone and projector (momentum on a cosine schedule
from 0.996 to 1); SimSiam's is the online projection under stop-gradient. Both are symmetric
over the two views, and each view goes through the encoder alone, as both reference codes do
(``online(x1)``, ``online(x2)``), so batch norm normalises over one view. The heads are the
papers' (``objective.byol|simsiam.projector|predictor``). The loss is this rank's share of the
mean over the global batch, so DDP's gradient average is the gradient of the global mean, also
when ranks hold different numbers of images. The momentum after step ``s`` of ``K`` is the
schedule at ``(s - 1) / K``, as BYOL's code indexes it: the first update uses 0.996.
"""

from __future__ import annotations

from typing import Any

import torch

from vlcontrast.losses.ssl import regression_loss
from vlcontrast.objective_settings import BYOLConfig, SimSiamConfig
from vlcontrast.objectives.base import full, view
from vlcontrast.objectives.image_task import ImageTask
from vlcontrast.objectives.momentum import MomentumObjective


def _symmetric(p_a, p_b, z_a, z_b) -> torch.Tensor:
    return regression_loss(full(p_a), full(z_b)) + regression_loss(full(p_b), full(z_a))


class BYOLObjective(MomentumObjective):
    def __init__(self, cfg: BYOLConfig | None = None):
        super().__init__()
        self.cfg = cfg if cfg is not None else BYOLConfig()

    def outputs(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        x_a, x_b = view(batch, -2), view(batch, -1)
        out = {"p_a": self.embed(x_a)["pred"], "p_b": self.embed(x_b)["pred"]}
        return {**out, "z_a": self.target_embed(x_a), "z_b": self.target_embed(x_b)}

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, Any]:
        o = outputs
        loss = _symmetric(o["p_a"], o["p_b"], o["z_a"], o["z_b"])
        return {"loss": loss, "metrics": {}}


class SimSiamObjective(ImageTask):
    def __init__(self, cfg: SimSiamConfig | None = None):
        super().__init__()
        self.cfg = cfg if cfg is not None else SimSiamConfig()

    def outputs(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        a, b = self.embed(view(batch, -2)), self.embed(view(batch, -1))
        return {"p_a": a["pred"], "p_b": b["pred"], "z_a": a["emb"], "z_b": b["emb"]}

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, Any]:
        o = outputs
        # SimSiam's D(p1, sg(z2))/2 + D(p2, sg(z1))/2 with D = -cos: (BYOL's loss - 4) / 4
        loss = (_symmetric(o["p_a"], o["p_b"], o["z_a"], o["z_b"]) - 4) / 4
        return {"loss": loss, "metrics": {}}
