"""SigLIP objective: image-text batch -> pairwise sigmoid loss with a learnable bias."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vlcontrast.config import LossConfig
from vlcontrast.losses.siglip import gathered_siglip_loss
from vlcontrast.objectives.base import Objective, detached


class SigLIPObjective(Objective):
    def __init__(self, cfg: LossConfig | None = None):
        self.cfg = cfg if cfg is not None else LossConfig(name="siglip")

    def forward(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        img_emb, txt_emb, logit_scale, logit_bias = model(
            batch["images"], batch["input_ids"], batch["attention_mask"]
        )
        return {
            "img_emb": img_emb,
            "txt_emb": txt_emb,
            "logit_scale": logit_scale,
            "logit_bias": logit_bias,
        }

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

    def after_step(self, model: nn.Module) -> None:
        self.unwrap(model).clamp_logit_scale()
