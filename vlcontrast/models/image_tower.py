"""Image tower: any timm model's pooled features plus a linear projection to the embedding space.

Sits between ``data`` (normalised image tensors) and the losses. ``num_classes=0`` makes timm
return pooled features of size ``num_features`` for every architecture (timm's uniform model
interface), so CNNs and ViTs are handled alike. ``img_size`` is passed to models whose constructor
takes it (ViT-like, fixed position embeddings); CNNs reject it and accept any resolution anyway.
"""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from torch import nn

from vlcontrast.config import ImageTowerConfig
from vlcontrast.data.transforms import normalize_uint8


def create_trunk(cfg: ImageTowerConfig) -> nn.Module:
    """timm model with its classifier removed; ``img_size`` goes only where it is accepted."""
    kwargs = {"img_size": cfg.image_size, **cfg.model_kwargs}
    try:
        return timm.create_model(cfg.model, pretrained=cfg.pretrained, num_classes=0, **kwargs)
    except TypeError as err:
        if "img_size" not in str(err) or "img_size" in cfg.model_kwargs:
            raise
    kwargs.pop("img_size")
    return timm.create_model(cfg.model, pretrained=cfg.pretrained, num_classes=0, **kwargs)


class ImageTower(nn.Module):
    def __init__(self, cfg: ImageTowerConfig, embed_dim: int):
        super().__init__()
        self.trunk = create_trunk(cfg)
        self.proj = nn.Linear(self.trunk.num_features, embed_dim, bias=False)
        data_cfg = self.trunk.pretrained_cfg
        self.mean = tuple(cfg.mean) if cfg.mean else tuple(data_cfg.get("mean", (0.5, 0.5, 0.5)))
        self.std = tuple(cfg.std) if cfg.std else tuple(data_cfg.get("std", (0.5, 0.5, 0.5)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images -> (B, D) unit-norm embeddings. uint8 images (the training
        pipeline's) are normalised here, on the device; float images must be normalised."""
        if images.dtype == torch.uint8:
            images = normalize_uint8(images, self.mean, self.std)
        features = self.trunk(images)  # (B, num_features)
        return F.normalize(self.proj(features), dim=-1)
