"""Symmetric InfoNCE (CLIP) loss on L2-normalised embeddings.

Pure functions of tensors: ``img_emb`` and ``txt_emb`` are (B, D) and row ``i`` of one matches row
``i`` of the other. The loss is the mean of image->text and text->image cross-entropy over the
scaled cosine-similarity matrix (Radford et al. 2021, figure 3).

The distributed version (local rows against gathered columns in both directions, positives at
``rank * B + i``) extends these functions in the distributed-loss issue.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def clip_logits(
    img_emb: torch.Tensor, txt_emb: torch.Tensor, logit_scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns ``logits_per_image`` (B, B) and ``logits_per_text`` (B, B)."""
    logits_per_image = logit_scale * img_emb @ txt_emb.T  # (B, B)
    return logits_per_image, logits_per_image.T


def clip_loss(
    img_emb: torch.Tensor,
    txt_emb: torch.Tensor,
    logit_scale: torch.Tensor,
) -> torch.Tensor:
    """Symmetric InfoNCE: (CE(image->text) + CE(text->image)) / 2, averaged over the B pairs."""
    logits_per_image, logits_per_text = clip_logits(img_emb, txt_emb, logit_scale)
    labels = torch.arange(img_emb.shape[0], device=img_emb.device)
    loss_i2t = F.cross_entropy(logits_per_image, labels)
    loss_t2i = F.cross_entropy(logits_per_text, labels)
    return (loss_i2t + loss_t2i) / 2
