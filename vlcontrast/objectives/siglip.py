"""SigLIP objective: image-text batch -> pairwise sigmoid loss with a learnable bias
(Zhai et al. 2023); the model gets its ``logit_bias`` because this objective asks for one."""

from __future__ import annotations

from typing import Any

import torch

from vlcontrast.losses.siglip import gathered_siglip_loss
from vlcontrast.objective_settings import SigLIPConfig
from vlcontrast.objectives.base import Objective, detached, model_inputs


class SigLIPObjective(Objective):
    def __init__(self, cfg: SigLIPConfig | None = None):
        super().__init__()
        self.cfg = cfg if cfg is not None else SigLIPConfig()

    def outputs(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        out = self.model(**model_inputs(batch, self.modalities))
        names = ("img_emb", "txt_emb", "logit_scale", "logit_bias")
        return {name: out[name] for name in names}

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, Any]:
        loss = gathered_siglip_loss(
            outputs["img_emb"].float(),
            outputs["txt_emb"].float(),
            outputs["logit_scale"].float(),
            outputs["logit_bias"].float(),
        )
        metrics = {
            "logit_scale": detached(outputs["logit_scale"]),
            "logit_bias": detached(outputs["logit_bias"]),
        }
        return {"loss": loss, "metrics": metrics}

    def after_step(self, step: int) -> None:
        self.model.clamp_logit_scale()
