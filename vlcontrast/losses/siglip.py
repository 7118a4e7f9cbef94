"""SigLIP: the pairwise sigmoid loss with a learnable temperature and bias (Zhai et al. 2023).

Every image-text pair is an independent binary problem: label +1 on the diagonal, -1 elsewhere,
``loss = -(1/B) sum_ij log sigmoid(z_ij * (t * <x_i, y_j> + b))``. No softmax normaliser couples
the rows, so across ranks the text embeddings travel around a ring (``neighbour_exchange``, W-1
hops) and each rank scores its own images against one chunk at a time: no rank ever holds the
full matrix or all the texts at once. The exchange is differentiable and sends each chunk's
gradient back to its owner, so gradients are exact after DDP averaging (per-rank sums are scaled
by W / N, as in ``vlcontrast.distributed``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlcontrast import distributed as dist_lib


def _pair_loss_sum(
    img_emb: torch.Tensor,
    txt_emb: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor,
    positives_on_diagonal: bool,
) -> torch.Tensor:
    logits = logit_scale * img_emb @ txt_emb.T + logit_bias  # (B, Bt)
    signs = -torch.ones_like(logits)
    if positives_on_diagonal:
        signs.fill_diagonal_(1.0)
    return -F.logsigmoid(signs * logits).sum()


def siglip_loss(
    img_emb: torch.Tensor,
    txt_emb: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor,
) -> torch.Tensor:
    """Sigmoid loss of one batch, summed over all B² pairs and divided by B (as in the paper)."""
    return _pair_loss_sum(img_emb, txt_emb, logit_scale, logit_bias, True) / img_emb.shape[0]


def gathered_siglip_loss(
    img_emb: torch.Tensor,
    txt_emb: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor,
) -> torch.Tensor:
    """SigLIP over the global batch with text chunks passed around the ranks.

    Returns this rank's share; the shares average to the global loss.
    """
    sizes = dist_lib.batch_sizes(img_emb.shape[0], img_emb.device)
    world, rank = len(sizes), dist_lib.rank()
    total = _pair_loss_sum(img_emb, txt_emb, logit_scale, logit_bias, True)
    chunk = txt_emb
    for hop in range(1, world):
        # After `hop` hops we hold the texts of rank (rank - hop).
        chunk = dist_lib.neighbour_exchange(
            chunk,
            to=(rank + 1) % world,
            frm=(rank - 1) % world,
            recv_rows=sizes[(rank - hop) % world],
        )
        total = total + _pair_loss_sum(img_emb, chunk, logit_scale, logit_bias, False)
    return total * (world / sum(sizes))
