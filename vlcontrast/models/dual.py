"""Dual encoder (CLIP, SigLIP): an image tower, a text tower and the learnable ``logit_scale``;
with ``model.logit_bias`` also a learnable ``logit_bias`` (SigLIP paper, section 3.3).

A thin holder of parameters: the contrastive loss lives in ``vlcontrast.losses``. ``logit_scale``
is stored in log space, initialised at ln(1/0.07) (CLIP) or, with a bias, ln 10 and bias -10
(SigLIP) unless ``model.init_logit_scale`` says otherwise, and clamped at ln(100) after every
optimizer step (CLIP paper, section 2.5): clamping the stored value, not its use in ``forward``,
keeps the gradient alive when the scale wants to come back down.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vlcontrast.config import Config
from vlcontrast.models.clip_init import init_clip_text, init_vit, is_clip_text, is_clip_vit
from vlcontrast.models.image_tower import ImageTower
from vlcontrast.models.text_tower import TextTower, inline_config

CLIP_LOGIT_SCALE = math.log(1 / 0.07)  # CLIP paper
SIGLIP_LOGIT_SCALE = math.log(10.0)  # SigLIP paper


class DualEncoder(nn.Module):
    """``forward(images=None, input_ids=None, attention_mask=None)`` -> dict with ``img_emb``,
    ``img_feat`` (given images), ``txt_emb``, ``txt_feat`` (given text), ``logit_scale``
    (exp'd), with a bias ``logit_bias`` and, with ``feature_map``, ``img_map`` (the image
    tower's spatial map: ``ImageTower.features_and_map``). Heads of a method trained beside
    CLIP (SLIP's SimCLR head) belong to that method (``objectives/``), not to this model."""

    def __init__(self, cfg: Config):
        super().__init__()
        m = cfg.model
        self.embed_dim = m.embed_dim
        self.image = ImageTower(cfg.image, m.embed_dim, m.proj_layers, m.proj_hidden)
        self.text = TextTower(cfg.text, m.embed_dim)
        # Towers built from scratch in CLIP's layout start as OpenCLIP's (models/clip_init.py)
        image_from_scratch = not (cfg.image.pretrained or cfg.image.checkpoint_path)
        if image_from_scratch and is_clip_vit(self.image.trunk):
            init_vit(self.image.trunk, self.image.proj)
        text_from_scratch = bool(inline_config(cfg.text)) or not cfg.text.pretrained
        if text_from_scratch and is_clip_text(self.text.encoder):
            init_clip_text(self.text.encoder, self.text.proj)
        bias = bool(m.logit_bias)
        init = m.init_logit_scale
        if init is None:
            init = SIGLIP_LOGIT_SCALE if bias else CLIP_LOGIT_SCALE
        self.logit_scale = nn.Parameter(torch.tensor(float(init)))
        self.logit_bias = nn.Parameter(torch.tensor(float(m.init_logit_bias))) if bias else None
        self.max_logit_scale = m.max_logit_scale

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.image(images)[1]

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.text(input_ids, attention_mask)[1]

    def forward(
        self,
        images: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        feature_map: bool = False,
    ) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        if images is not None and feature_map:
            out["img_feat"], out["img_map"] = self.image.features_and_map(images)
            out["img_emb"] = F.normalize(self.image.proj(out["img_feat"]), dim=-1)
        elif images is not None:
            out["img_feat"], out["img_emb"] = self.image(images)
        if input_ids is not None:
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            out["txt_feat"], out["txt_emb"] = self.text(input_ids, attention_mask)
        out["logit_scale"] = self.logit_scale.exp()
        if self.logit_bias is not None:
            out["logit_bias"] = self.logit_bias
        return out

    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        self.logit_scale.clamp_(0.0, self.max_logit_scale)
