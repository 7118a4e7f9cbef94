"""CLIP objective: image-text batch -> symmetric InfoNCE loss with a learnable temperature."""

from __future__ import annotations

from typing import Any

from torch import nn

from vlcontrast.losses.clip import clip_loss
from vlcontrast.objectives.base import Objective, detached


class CLIPObjective(Objective):
    def __call__(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
        img_emb, txt_emb, logit_scale = model(
            batch["images"], batch["input_ids"], batch["attention_mask"]
        )
        loss = clip_loss(img_emb.float(), txt_emb.float(), logit_scale.float())
        return {"loss": loss, "metrics": {"logit_scale": detached(logit_scale)}}

    def after_step(self, model: nn.Module) -> None:
        self.unwrap(model).clamp_logit_scale()
