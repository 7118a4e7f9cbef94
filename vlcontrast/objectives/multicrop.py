"""The multi-crop half of SwAV and DINO: their views (2 global crops at the training size and N
local ones, ``data/view_presets.py:multicrop_groups``) and the backbone pass over them.

Crops of one size go through the backbone together, global then local (DINO's
``MultiCropWrapper`` and SwAV's ``forward``: one pass per resolution), so batch norm
normalises over what theirs does. A ViT takes the local crops at their own size: the run sets
``image.dynamic_size`` (``train/model_setup.py``), and timm interpolates the position
embeddings; a CNN takes any size as it is.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from vlcontrast.data.view_presets import multicrop_groups, vit_patch
from vlcontrast.schema import ConfigError


class MultiCrop:
    """Mixin of an image task whose settings (``objective.<name>``) hold ``crops``."""

    crop_preset: ClassVar[str] = ""  # a key of data.view_presets.MULTICROP_PRESETS
    model: nn.Module

    @classmethod
    def view_groups(cls, cfg: Any) -> list:
        name = cfg.objective.name
        where = f"objective.{name}.crops"
        crops = getattr(cfg.objective, name).crops
        patch = vit_patch(cfg.image.model, cfg.image.model_kwargs)
        try:
            return multicrop_groups(crops, cls.crop_preset, cfg.image.image_size, where, patch)
        except ValueError as err:
            raise ConfigError(str(err)) from None

    @staticmethod
    def crop_count(batch: dict[str, Any]) -> int:
        return sum(group.shape[1] for group in batch["views"].values())

    def crop_features(self, batch: dict[str, Any], groups: tuple[str, ...] = ("global", "local")):
        """Pooled backbone features of every crop of ``groups``, one pass per group:
        (B, C, F), the global crops first."""
        feats = []
        for name in groups:
            crops = batch["views"].get(name)
            if crops is None:
                continue
            b, count = crops.shape[:2]
            images = crops.transpose(0, 1).flatten(0, 1)  # (count·B, 3, S, S), crop-major
            feat = self.model(images=images)["img_feat"]  # (count·B, F)
            feats.append(feat.view(count, b, -1).transpose(0, 1))  # (B, count, F)
        return torch.cat(feats, dim=1)
