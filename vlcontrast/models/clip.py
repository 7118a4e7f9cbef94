"""CLIP and SigLIP models: an image tower, a text tower and the learnable ``logit_scale``
(SigLIP adds a learnable ``logit_bias``, initialised at -10, SigLIP paper section 3.3).

A thin holder of parameters: the contrastive loss lives in ``vlcontrast.losses``. ``logit_scale``
is stored in log space, initialised at ln(1/0.07) (SigLIP: ln 10) unless
``model.init_logit_scale`` says otherwise, and clamped at ln(100) after every optimizer
step (CLIP paper, section 2.5): clamping the stored value, not its use in ``forward``, keeps the
gradient alive when the scale wants to come back down.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vlcontrast.config import Config
from vlcontrast.models.image_tower import ImageTower
from vlcontrast.models.text_tower import TextTower


class CLIP(nn.Module):
    default_logit_scale = math.log(1 / 0.07)

    def __init__(self, cfg: Config):
        super().__init__()
        self.embed_dim = cfg.model.embed_dim
        self.image = ImageTower(cfg.image, cfg.model.embed_dim)
        self.text = TextTower(cfg.text, cfg.model.embed_dim)
        init = cfg.model.init_logit_scale
        init = self.default_logit_scale if init is None else init
        self.logit_scale = nn.Parameter(torch.tensor(float(init)))
        self.max_logit_scale = cfg.model.max_logit_scale

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.image(images)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.text(input_ids, attention_mask)

    def forward(
        self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns ``img_emb`` (B, D), ``txt_emb`` (B, D) and ``logit_scale`` (exp'd, scalar)."""
        img_emb = self.encode_image(images)
        txt_emb = self.encode_text(input_ids, attention_mask)
        return img_emb, txt_emb, self.logit_scale.exp()

    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        self.logit_scale.clamp_(0.0, self.max_logit_scale)


class SigLIP(CLIP):
    """CLIP's towers plus ``logit_bias``; ``forward`` also returns the bias."""

    default_logit_scale = math.log(10.0)

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.logit_bias = nn.Parameter(torch.tensor(float(cfg.model.init_logit_bias)))

    def forward(
        self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns ``img_emb``, ``txt_emb``, ``logit_scale`` (exp'd) and ``logit_bias``."""
        return (*super().forward(images, input_ids, attention_mask), self.logit_bias)
