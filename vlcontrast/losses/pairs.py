"""In-batch negatives for text pairs: each anchor's positive against every other positive (and
every hard negative) of the global batch. This is sentence-transformers'
``MultipleNegativesRankingLoss`` (scale 20 = temperature 0.05) and, with the anchor encoded
twice through dropout as its own positive, unsupervised SimCSE (Gao et al. 2021, temperature
0.05).

Anchor ``i`` of this rank (global row ``start + i``) is scored against the gathered positives
(its own at column ``start + i``) and, when given, the gathered hard negatives (H per anchor,
every one a negative for every anchor, as both references do):
``loss_i = -log softmax(a_i · [P_all; N_all] / T)[start + i]``. ``symmetric`` adds the positive
-> anchor direction (sentence-transformers' ``MultipleNegativesSymmetricRankingLoss``); without
hard negatives that is exactly the CLIP loss at scale 1/T, so it goes through
``gathered_clip_loss`` and tiles for large batches as CLIP does.

Across ranks: this rank's sum is scaled by W / N (N the global batch), so per-rank losses average
to the global mean and DDP's gradient average is the global gradient (``all_gather_with_grad``
sums the columns' gradients over ranks).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlcontrast import distributed as dist_lib
from vlcontrast.losses.clip import gathered_clip_loss


def in_batch_negatives_loss(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor | None = None,
    temperature: float = 0.05,
    symmetric: bool = False,
    tiled_from: int | None = None,
) -> torch.Tensor:
    """``anchor``, ``positive`` (B, D) and ``negative`` (B, H, D) unit-norm rows; this rank's
    share of the global mean loss."""
    if symmetric and negative is None:
        scale = torch.tensor(1.0 / temperature, dtype=anchor.dtype, device=anchor.device)
        return gathered_clip_loss(anchor, positive, scale, tiled_from=tiled_from)
    rows = anchor.shape[0]
    sizes = dist_lib.batch_sizes(rows, anchor.device)
    world, total, start = len(sizes), sum(sizes), sum(sizes[: dist_lib.rank()])
    columns = dist_lib.all_gather_with_grad(positive, sizes)  # (N, D)
    if negative is not None:
        h = negative.shape[1]
        flat = negative.reshape(rows * h, -1)  # (B·H, D)
        negatives = dist_lib.all_gather_with_grad(flat, [s * h for s in sizes])  # (N·H, D)
        columns = torch.cat([columns, negatives])  # (N + N·H, D)
    target = torch.arange(start, start + rows, device=anchor.device)
    loss = F.cross_entropy(anchor @ columns.T / temperature, target, reduction="sum")
    if symmetric:  # positive -> anchors of the global batch (negatives are no anchors)
        anchors = dist_lib.all_gather_with_grad(anchor, sizes)  # (N, D)
        back = F.cross_entropy(positive @ anchors.T / temperature, target, reduction="sum")
        loss = (loss + back) / 2
    return loss * (world / total)
