"""Image-only contrastive losses on gathered embeddings: supervised contrastive (SupCon) and
NT-Xent (SimCLR), which is SupCon with one positive per anchor.

SupCon (Khosla et al. 2020, eq. 2, the "L_out" form): for anchor ``i`` with positives ``P(i)``
(the other samples with its label), ``loss_i = -1/|P(i)| sum_{p in P(i)} log softmax_i(p)``,
the softmax running over every sample except ``i`` itself, at temperature ``T``. Anchors with no
positive in the global batch are left out of the mean.

NT-Xent (Chen et al. 2020): two views of each of N samples give 2N anchors; each anchor's positive
is its other view and the other 2N - 2 samples are its negatives. Labelling every sample with its
global index turns it into SupCon, so both share one implementation.

Across ranks, this rank's anchors are scored against the gathered embeddings of all ranks
(``all_gather_with_grad``; labels gathered without grad); the self-similarity sits at column
``start + i``. Per-rank sums are scaled by W / (anchors with a positive, over all ranks), so
gradients are exact after DDP averaging.
"""

from __future__ import annotations

import torch

from vlcontrast import distributed as dist_lib


def supcon_loss(emb: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Supervised contrastive loss of ``emb`` (M, D), L2-normalised, with ``labels`` (M,).

    Several views of one sample are several rows with the same label. Returns this rank's share
    of the global loss (the loss itself in one process).
    """
    rows = emb.shape[0]
    sizes = dist_lib.batch_sizes(rows, emb.device)
    start = sum(sizes[: dist_lib.rank()])
    emb_all = dist_lib.all_gather_with_grad(emb, sizes)  # (M_all, D)
    labels_all = dist_lib.all_gather_no_grad(labels, sizes)  # (M_all,)
    own = torch.arange(rows, device=emb.device)
    is_self = torch.zeros(rows, emb_all.shape[0], dtype=torch.bool, device=emb.device)
    is_self[own, start + own] = True  # (M, M_all)
    logits = (emb @ emb_all.T / temperature).masked_fill(is_self, float("-inf"))  # (M, M_all)
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positive = (labels[:, None] == labels_all[None, :]) & ~is_self  # (M, M_all)
    n_pos = positive.sum(1)
    has_pos = n_pos > 0
    pos_log_prob = log_prob.masked_fill(~positive, 0.0).sum(1)  # -inf * 0 avoided by the fill
    per_anchor = -pos_log_prob[has_pos] / n_pos[has_pos]
    counted = dist_lib.all_reduce(has_pos.sum().to(emb.dtype))
    if counted == 0:
        raise ValueError("supcon_loss: no anchor has a positive in the batch (all labels unique)")
    return per_anchor.sum() * (dist_lib.world_size() / counted)


def nt_xent_loss(
    emb_a: torch.Tensor, emb_b: torch.Tensor, temperature: float = 0.5
) -> torch.Tensor:
    """NT-Xent of two views ``emb_a``, ``emb_b`` (B, D), L2-normalised; 2N - 2 negatives each."""
    rows = emb_a.shape[0]
    start = sum(dist_lib.batch_sizes(rows, emb_a.device)[: dist_lib.rank()])
    index = torch.arange(start, start + rows, device=emb_a.device)
    return supcon_loss(torch.cat([emb_a, emb_b]), torch.cat([index, index]), temperature)
