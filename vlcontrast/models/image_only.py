"""Image-only encoder (SimCLR, MoCo, BYOL, ...): a timm backbone and nothing else.

The inference artifact of the image-only methods: each method owns its projection head,
predictor and momentum copy (``objectives/``), so a checkpoint's ``model.safetensors`` holds the
backbone that evaluation and search use. Same contract as the dual encoder:
``forward(images=None, input_ids=None, attention_mask=None, feature_map=False)`` -> dict with
``img_feat`` (pooled backbone features, what linear probes and kNN evaluate), ``img_emb`` (the
same, unit-norm: what ``encode_image`` returns and search embeds) and, with ``feature_map``,
``img_map`` (a CNN's (B, C, H, W), a ViT's patch tokens (B, N, C)). It has no text tower: text
input is refused with a message. The projection head discards information downstream tasks
need (SimCLR, section 4.2: the layer before it is 10+ points better in linear evaluation), so
image-only models are judged before it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vlcontrast.config import Config
from vlcontrast.models.image_tower import ImageTower


class ImageEncoder(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.image = ImageTower(cfg.image)
        self.embed_dim = self.image.num_features  # what encode_image returns

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm backbone features: what evaluation and search embed."""
        return F.normalize(self.image.features(images), dim=-1)

    def forward(
        self,
        images: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        feature_map: bool = False,
    ) -> dict[str, torch.Tensor]:
        if input_ids is not None:
            raise ValueError("an image-only model (model.kind=image) has no text tower")
        if images is None:
            return {}
        out: dict[str, torch.Tensor] = {}
        if feature_map:
            out["img_feat"], out["img_map"] = self.image.features_and_map(images)
        else:
            out["img_feat"] = self.image.features(images)  # (B, F)
        out["img_emb"] = F.normalize(out["img_feat"], dim=-1)
        return out
