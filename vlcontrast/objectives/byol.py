"""BYOL (Grill et al. 2020) and SimSiam (Chen & He 2021): predict one view's projection from the
other's, with no negatives; the target carries no gradient (stop-gradient).

BYOL's target is a momentum copy of the model (momentum on a cosine schedule from 0.996 to 1);
SimSiam's is the model itself under stop-gradient. Both are symmetric over the two views and
both need a predictor (``model.predictor_hidden``). The loss is this rank's share of the mean
over the global batch, so DDP's gradient average is the gradient of the global mean, also when
ranks hold different numbers of images. The momentum after step ``s`` of ``K`` is the schedule
at ``(s - 1) / K``, as BYOL's code indexes it: the first update uses 0.996.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vlcontrast.losses.ssl import regression_loss
from vlcontrast.objective_settings import BYOLConfig
from vlcontrast.objectives.base import Objective, full, halves, two_views
from vlcontrast.objectives.momentum import MomentumObjective
from vlcontrast.schema import ConfigError


def _symmetric(p_a, p_b, z_a, z_b) -> torch.Tensor:
    return regression_loss(full(p_a), full(z_b)) + regression_loss(full(p_b), full(z_a))


class BYOLObjective(MomentumObjective):
    modalities = ("image",)
    views = 2
    needs_predictor = True

    def __init__(self, cfg: BYOLConfig | None = None):
        super().__init__()
        self.cfg = cfg if cfg is not None else BYOLConfig()

    def outputs(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        images = two_views(batch, self.bn_groups)
        p_a, p_b = halves(model(images=images)["img_pred"], self.bn_groups)
        with torch.no_grad():
            z_a, z_b = halves(self.target(images=images)["img_emb"], self.bn_groups)
        return {"p_a": p_a, "p_b": p_b, "z_a": z_a, "z_b": z_b}

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, Any]:
        o = outputs
        loss = _symmetric(o["p_a"], o["p_b"], o["z_a"], o["z_b"])
        return {"loss": loss, "metrics": {}}

    def after_step(self, model: nn.Module, step: int) -> None:
        self.update_target(model, step)


class SimSiamObjective(Objective):
    modalities = ("image",)
    views = 2

    def __init__(self, cfg: Any = None):
        super().__init__()

    def setup(self, model: nn.Module, cfg, global_batch: int) -> None:
        super().setup(model, cfg, global_batch)
        if getattr(self.unwrap(model), "predictor", None) is None:
            raise ConfigError(
                "model.predictor_hidden: objective 'simsiam' needs a predictor MLP; set its "
                "width, e.g. model.predictor_hidden=512 (SimSiam: a quarter of embed_dim's 2048)"
            )

    def outputs(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        out = model(images=two_views(batch, self.bn_groups))
        p_a, p_b = halves(out["img_pred"], self.bn_groups)
        z_a, z_b = halves(out["img_emb"], self.bn_groups)
        return {"p_a": p_a, "p_b": p_b, "z_a": z_a, "z_b": z_b}

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, Any]:
        o = outputs
        # SimSiam's D(p1, sg(z2))/2 + D(p2, sg(z1))/2 with D = -cos: (BYOL's loss - 4) / 4
        loss = (_symmetric(o["p_a"], o["p_b"], o["z_a"], o["z_b"]) - 4) / 4
        return {"loss": loss, "metrics": {}}
