"""SLIP (Mu et al. 2021): CLIP plus SimCLR on the image tower of the same model, in one batch.

Each image gives three crops from one decode: the plain training crop for the CLIP term and two
augmented views (``views.first``/``second``) for the SimCLR term, which runs on SLIP's image MLP
head over the image tower's features (``objective.slip.head``, owned by this task: 3 layers of
4096 with batch norm, 256 out). The loss is ``clip + ssl_scale * nt_xent`` (the paper's weight
is 1). As in SLIP's code, each crop goes through the image tower alone (``visual(aug1)``,
``visual(aug2)``), so the head's batch norm normalises over one view; both terms are exact
across ranks.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlcontrast.losses.clip import gathered_clip_loss
from vlcontrast.losses.supcon import nt_xent_loss
from vlcontrast.models.heads import build_head
from vlcontrast.objective_settings import SLIPConfig
from vlcontrast.objectives.base import Objective, detached, full
from vlcontrast.objectives.image_task import feature_width


class SLIPObjective(Objective):
    modalities = ("image", "text")
    views = 2

    def __init__(self, cfg: SLIPConfig | None = None):
        super().__init__()
        self.cfg = cfg if cfg is not None else SLIPConfig()

    def setup(self, model: nn.Module, cfg, global_batch: int) -> None:
        super().setup(model, cfg, global_batch)
        dtype = next(model.parameters()).dtype
        self.head = build_head(self.cfg.head, feature_width(model)).to(dtype)

    def ssl_embed(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(self.model(images=images)["img_feat"]), dim=-1)

    def outputs(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        images = batch["images"]  # (B, 3, 3, S, S): the plain crop, then the two views
        out = self.model(
            images=images[:, 0],
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
        )
        return {
            "img_emb": out["img_emb"],
            "txt_emb": out["txt_emb"],
            "logit_scale": out["logit_scale"],
            "ssl_a": self.ssl_embed(images[:, 1]),
            "ssl_b": self.ssl_embed(images[:, 2]),
        }

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, Any]:
        clip = gathered_clip_loss(
            full(outputs["img_emb"]), full(outputs["txt_emb"]), full(outputs["logit_scale"])
        )
        ssl = nt_xent_loss(full(outputs["ssl_a"]), full(outputs["ssl_b"]), self.cfg.temperature)
        metrics = {
            "clip_loss": detached(clip),
            "ssl_loss": detached(ssl),
            "logit_scale": detached(outputs["logit_scale"]),
        }
        return {"loss": clip + self.cfg.ssl_scale * ssl, "metrics": metrics}

    def after_step(self, step: int) -> None:
        self.model.clamp_logit_scale()
