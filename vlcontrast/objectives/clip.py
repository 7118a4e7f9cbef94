"""CLIP objective: image-text batch -> symmetric InfoNCE over the global batch.

The blockwise (tiled) kernel is used when ``objective.clip.tiled`` is ``on``, or ``auto`` and the
global batch reaches ``objective.clip.tiled_from``: below that the textbook loss is as fast and
the B x B matrix is small (``benchmarks/loss_memory.py`` measures both).
"""

from __future__ import annotations

from typing import Any

import torch

from vlcontrast.losses.clip import gathered_clip_loss
from vlcontrast.objective_settings import CLIPConfig
from vlcontrast.objectives.base import Objective, detached, model_inputs


class CLIPObjective(Objective):
    def __init__(self, cfg: CLIPConfig | None = None):
        super().__init__()
        self.cfg = cfg if cfg is not None else CLIPConfig()

    def outputs(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        out = self.model(**model_inputs(batch, self.modalities))
        return {
            "img_emb": out["img_emb"],
            "txt_emb": out["txt_emb"],
            "logit_scale": out["logit_scale"],
        }

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, Any]:
        loss = gathered_clip_loss(
            outputs["img_emb"].float(),
            outputs["txt_emb"].float(),
            outputs["logit_scale"].float(),
            local=self.cfg.gather == "local",
            tiled=self.cfg.tiled == "on",
            tiled_from=self.cfg.tiled_from if self.cfg.tiled == "auto" else None,
            tile_size=self.cfg.tile_size,
        )
        return {"loss": loss, "metrics": {"logit_scale": detached(outputs["logit_scale"])}}

    def after_step(self, step: int) -> None:
        self.model.clamp_logit_scale()
