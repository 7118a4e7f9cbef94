"""Image tower: any timm model's pooled features plus a projection head to the embedding space.

Sits between ``data`` (uint8 or normalised image tensors) and the losses. ``num_classes=0`` makes
timm return pooled features of size ``num_features`` for every architecture (timm's uniform model
interface), so CNNs and ViTs are handled alike. ``img_size`` (and, with ``image.dynamic_size``,
``dynamic_img_size``) is passed to models whose constructor takes it (ViT-like, fixed position
embeddings); CNNs reject it and accept any resolution anyway.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn

from vlcontrast import distributed
from vlcontrast.config import ConfigError, ImageTowerConfig
from vlcontrast.config_checks import check_model_kwargs
from vlcontrast.data.image import normalize_uint8
from vlcontrast.models.backbone_weights import describe, load_backbone
from vlcontrast.models.heads import mlp

HUB_PREFIXES = ("hf-hub:", "hf_hub:")  # timm names resolved on the Hugging Face hub
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # Radford et al. 2021
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def check_model_name(name: str) -> None:
    """An unknown timm name is one message with the closest names timm knows."""
    if name.startswith((*HUB_PREFIXES, "local-dir:")) or timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(
        f"image.model: timm has no model {name!r}{hint} (timm.list_models() lists all)"
    )


def create_trunk(cfg: ImageTowerConfig) -> nn.Module:
    """timm model with its classifier removed; ``img_size`` goes only where it is accepted."""
    check_model_name(cfg.model)
    check_model_kwargs(cfg.model_kwargs)  # a saved config too: from_dict does not validate
    kwargs = {"img_size": cfg.image_size, **cfg.model_kwargs}
    if cfg.patch_dropout:
        kwargs["patch_drop_rate"] = cfg.patch_dropout
    if cfg.dynamic_size:  # a ViT interpolates its position embeddings to each image size
        kwargs["dynamic_img_size"] = True
    if cfg.checkpoint_path and not Path(cfg.checkpoint_path).is_file():
        raise ConfigError(f"image.checkpoint_path: no file {cfg.checkpoint_path}")
    trunk = build_trunk(cfg, kwargs)
    if cfg.checkpoint_path:  # read here, never by timm (models/backbone_weights.py says why)
        report = load_backbone(trunk, cfg.checkpoint_path, cfg.model)
        if distributed.rank() == 0:
            hint = (
                ""
                if cfg.mean
                else ". Set image.mean and image.std to the statistics these weights were "
                "trained with (ImageNet's for DINO, SwAV, MoCo and DenseCL); now CLIP's"
            )
            print(describe(report, cfg.checkpoint_path) + hint)
    return trunk


def build_trunk(cfg: ImageTowerConfig, kwargs: dict) -> nn.Module:
    """``timm.create_model`` with ``kwargs``, less the size arguments a CNN does not take."""
    common = {"pretrained": cfg.pretrained and not cfg.checkpoint_path, "num_classes": 0}
    try:
        for fixed_size in ("img_size", "dynamic_img_size", None):
            try:
                return timm.create_model(cfg.model, **common, **kwargs)
            except TypeError as err:  # a CNN: takes any size and no size argument
                if fixed_size is None or f"'{fixed_size}'" not in str(err):
                    raise
                if fixed_size in cfg.model_kwargs:
                    raise
            kwargs.pop(fixed_size)
    except TypeError as err:
        if "patch_drop_rate" in str(err):
            raise ConfigError(
                f"image.patch_dropout: {cfg.model!r} has no patch dropout (a timm ViT does)"
            ) from None
        bad = re.search(r"unexpected keyword argument '(\w+)'", str(err))
        if bad and bad.group(1) in cfg.model_kwargs:
            raise ConfigError(
                f"image.model_kwargs: {cfg.model!r} takes no {bad.group(1)!r} (a model.preset "
                f"sets the kwargs of its own ViT; set image.model_kwargs={{}} with another "
                f"image.model)"
            ) from None
        raise


class ImageTower(nn.Module):
    """``trunk`` (timm) and, in a dual encoder, ``proj`` (the projection to the shared space);
    ``forward`` returns features and embeddings."""

    def __init__(
        self,
        cfg: ImageTowerConfig,
        embed_dim: int | None = None,
        proj_layers: int = 1,
        proj_hidden: int = 0,
    ):
        super().__init__()
        self.trunk = create_trunk(cfg)
        self.channels_last = False
        self.num_features = self.trunk.num_features
        if embed_dim is not None:  # an image-only model's heads belong to its method
            self.proj = mlp(self.num_features, embed_dim, proj_layers, proj_hidden)
        # A pretrained trunk keeps the statistics it was trained with; from scratch: CLIP's.
        data_cfg = self.trunk.pretrained_cfg if cfg.pretrained else {}
        self.mean = tuple(cfg.mean) if cfg.mean else tuple(data_cfg.get("mean", OPENAI_CLIP_MEAN))
        self.std = tuple(cfg.std) if cfg.std else tuple(data_cfg.get("std", OPENAI_CLIP_STD))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images -> (B, F) pooled features. uint8 images (the training
        pipeline's) are normalised here, on the device; float images must be normalised."""
        return self.trunk(self.prepare(images))

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype == torch.uint8:
            images = normalize_uint8(images, self.mean, self.std)
        if self.channels_last:  # train.channels_last
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def features_and_map(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled features (B, F) and the spatial map they were pooled from: a CNN's last stage
        (B, C, H, W), a ViT's patch tokens (B, N, C) without its class or register tokens.
        timm's ``forward_features`` + ``forward_head(pre_logits=True)`` is what ``trunk(x)``
        runs, so the pooled features are the same."""
        tokens = self.trunk.forward_features(self.prepare(images))
        pooled = self.trunk.forward_head(tokens, pre_logits=True)
        if tokens.ndim == 3:  # (B, prefix + N, C)
            tokens = tokens[:, getattr(self.trunk, "num_prefix_tokens", 0) :]
        return pooled, tokens

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features (B, F) and unit-norm embeddings (B, D)."""
        features = self.features(images)
        return features, F.normalize(self.proj(features), dim=-1)
