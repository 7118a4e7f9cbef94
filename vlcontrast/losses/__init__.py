"""Contrastive losses as pure functions on embedding tensors."""

from vlcontrast.losses.clip import clip_logits, clip_loss

__all__ = ["clip_logits", "clip_loss"]
