"""CLIP model: an image tower, a text tower and the learnable temperature ``logit_scale``.

A thin holder of parameters: the contrastive loss lives in ``vlcontrast.losses``. ``logit_scale``
is stored in log space, initialised at ln(1/0.07) and clamped at ln(100) after every optimizer
step (CLIP paper, section 2.5): clamping the stored value, not its use in ``forward``, keeps the
gradient alive when the scale wants to come back down.
"""

from __future__ import annotations

import torch
from torch import nn

from vlcontrast.config import Config
from vlcontrast.models.image_tower import ImageTower
from vlcontrast.models.text_tower import TextTower


class CLIP(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.image = ImageTower(cfg.image, cfg.model.embed_dim)
        self.text = TextTower(cfg.text, cfg.model.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(cfg.model.init_logit_scale))
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
