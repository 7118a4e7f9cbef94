"""Image-only encoder (SimCLR, MoCo, BYOL, ...): a timm backbone, a projection head and, when
``model.predictor_hidden`` is set, a predictor MLP on the projection (BYOL, SimSiam, MoCo v3).

Same tower and head modules as the dual encoder, same contract:
``forward(images=None, input_ids=None, attention_mask=None)`` -> dict with ``img_feat``
(backbone features, what linear probes and kNN evaluate), ``img_proj`` (the projection),
``img_emb`` (unit-norm projection)
and, with a predictor, ``img_pred`` (unit-norm prediction). It has no text tower: text input is
refused with a message. ``encode_image`` (what ``vlcontrast eval`` and search embed) returns
the unit-norm backbone features, so ``embed_dim`` is the backbone's width and ``proj_dim`` the
projection's (``model.embed_dim``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vlcontrast.config import Config
from vlcontrast.models.heads import mlp
from vlcontrast.models.image_tower import ImageTower


class ImageEncoder(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        m = cfg.model
        self.proj_dim = m.embed_dim  # the projection the objectives train
        self.image = ImageTower(cfg.image, m.embed_dim, m.proj_layers, m.proj_hidden, m.proj_bn)
        self.embed_dim = self.image.num_features  # what encode_image returns
        self.predictor = (
            mlp(m.embed_dim, m.embed_dim, 2, m.predictor_hidden, bn=True)
            if m.predictor_hidden
            else None
        )

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm backbone features: what evaluation and search embed. The projection head
        discards information the downstream tasks need (SimCLR, section 4.2: the layer before
        it is 10+ points better in linear evaluation), so SSL models are judged before it."""
        return F.normalize(self.image.features(images), dim=-1)

    def forward(
        self,
        images: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        if input_ids is not None:
            raise ValueError("an image-only model (model.kind=image) has no text tower")
        if images is None:
            return {}
        features = self.image.features(images)  # (B, F)
        projection = self.image.proj(features)  # (B, D)
        out = {
            "img_feat": features,
            "img_proj": projection,  # before normalisation (Barlow Twins standardises it)
            "img_emb": F.normalize(projection, dim=-1),
        }
        if self.predictor is not None:
            out["img_pred"] = F.normalize(self.predictor(projection), dim=-1)
        return out
