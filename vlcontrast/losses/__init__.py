"""Contrastive losses as pure functions on embedding tensors, exact across ranks."""

from vlcontrast.losses.clip import clip_logits, clip_loss, gathered_clip_loss
from vlcontrast.losses.siglip import gathered_siglip_loss, siglip_loss
from vlcontrast.losses.supcon import nt_xent_loss, supcon_loss
from vlcontrast.losses.tiled import tiled_clip_loss

__all__ = [
    "clip_logits",
    "clip_loss",
    "gathered_clip_loss",
    "gathered_siglip_loss",
    "nt_xent_loss",
    "siglip_loss",
    "supcon_loss",
    "tiled_clip_loss",
]
