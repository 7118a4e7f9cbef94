"""SLIP (Mu et al. 2021): CLIP plus SimCLR on the image tower of the same model, in one batch.

Each image gives three crops from one decode: the plain training crop for the CLIP term and two
augmented views (``views.first``/``second``) for the SimCLR term, which runs on a separate MLP
head over the image tower's features (``model.ssl_head_hidden``). The loss is
``clip + ssl_scale * nt_xent`` (the paper's weight is 1). All three crops go through one forward
pass, so DDP sees every parameter used; both terms are exact across ranks.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vlcontrast.losses.clip import gathered_clip_loss
from vlcontrast.losses.supcon import nt_xent_loss
from vlcontrast.objective_settings import SLIPConfig
from vlcontrast.objectives.base import Objective, detached, full
from vlcontrast.schema import ConfigError


class SLIPObjective(Objective):
    modalities = ("image", "text")
    views = 2

    def __init__(self, cfg: SLIPConfig | None = None):
        super().__init__()
        self.cfg = cfg if cfg is not None else SLIPConfig()

    def setup(self, model: nn.Module, cfg, global_batch: int) -> None:
        super().setup(model, cfg, global_batch)
        if getattr(self.unwrap(model), "ssl_head", None) is None:
            raise ConfigError(
                "model.ssl_head_hidden: objective 'slip' trains SimCLR on an image MLP head; set "
                "its width, e.g. model.ssl_head_hidden=4096 (SLIP)"
            )

    def outputs(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        images = batch["images"]  # (B, 3, 3, S, S): the plain crop, then the two views
        n = images.shape[0]
        crops = torch.cat([images[:, 0], images[:, 1], images[:, 2]])  # (3B, 3, S, S)
        out = model(
            images=crops, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        )
        return {
            "img_emb": out["img_emb"][:n],
            "txt_emb": out["txt_emb"],
            "logit_scale": out["logit_scale"],
            "ssl_a": out["img_ssl"][n : 2 * n],
            "ssl_b": out["img_ssl"][2 * n :],
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

    def after_step(self, model: nn.Module, step: int) -> None:
        self.unwrap(model).clamp_logit_scale()
