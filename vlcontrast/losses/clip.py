"""Symmetric InfoNCE (CLIP) loss on L2-normalised embeddings, in one process or across ranks.

Pure functions of tensors: ``img_emb`` and ``txt_emb`` are (B, D) and row ``i`` of one matches row
``i`` of the other. The loss is the mean of image->text and text->image cross-entropy over the
scaled cosine-similarity matrix (Radford et al. 2021, figure 3).

Across ranks (:func:`gathered_clip_loss`) the negatives are every rank's samples and gradients are
exact (see ``vlcontrast.distributed`` for the scaling argument). Two modes, as in OpenCLIP:

- ``local=True``: this rank's rows against all gathered columns, positives at ``start + i`` where
  ``start`` is the number of rows on lower ranks. Each rank computes 2·B·N logits.
- ``local=False``: every rank computes the whole N x N loss (N² logits per rank, same result).

With ``tiled=True`` the loss runs on the blockwise kernel in ``losses/tiled.py`` (memory linear in
the batch); in local mode only the text embeddings are gathered, since the kernel completes its
column statistics with one all-reduce instead of gathering the images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlcontrast import distributed as dist_lib
from vlcontrast.losses.tiled import tiled_clip_loss


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


def gathered_clip_loss(
    img_emb: torch.Tensor,
    txt_emb: torch.Tensor,
    logit_scale: torch.Tensor,
    *,
    local: bool = True,
    tiled: bool = False,
    tiled_from: int | None = None,
    tile_size: int = 1024,
) -> torch.Tensor:
    """CLIP loss over the global batch (all ranks), exact in value and gradient.

    Returns this rank's share: the per-rank values average to the global loss, and after DDP's
    gradient averaging every parameter's gradient equals the single-process full-batch one.
    Ranks may hold different numbers of rows (the last batch of an epoch). ``tiled_from`` turns
    tiling on when the global batch reaches it; every rank decides on the same global size, so
    all ranks run the same collectives.
    """
    rows = img_emb.shape[0]
    sizes = dist_lib.batch_sizes(rows, img_emb.device)
    world, total = len(sizes), sum(sizes)
    start = sum(sizes[: dist_lib.rank()])
    tiled = tiled or (tiled_from is not None and total >= tiled_from)
    if tiled and local:
        txt_all = dist_lib.all_gather_with_grad(txt_emb, sizes)  # (N, D)
        return tiled_clip_loss(
            img_emb,
            txt_all,
            logit_scale,
            offset=start,
            weight=world / (2 * total),
            tile_size=tile_size,
            reduce_columns=world > 1,
        )
    img_all = dist_lib.all_gather_with_grad(img_emb, sizes)  # (N, D)
    txt_all = dist_lib.all_gather_with_grad(txt_emb, sizes)  # (N, D)
    if tiled:
        return tiled_clip_loss(img_all, txt_all, logit_scale, tile_size=tile_size)
    if not local or world == 1:
        return clip_loss(img_all, txt_all, logit_scale)
    labels = torch.arange(start, start + rows, device=img_emb.device)
    logits_per_image = logit_scale * img_emb @ txt_all.T  # (B, N)
    logits_per_text = logit_scale * txt_emb @ img_all.T  # (B, N)
    summed = F.cross_entropy(logits_per_image, labels, reduction="sum") + F.cross_entropy(
        logits_per_text, labels, reduction="sum"
    )
    return summed * (world / (2 * total))
