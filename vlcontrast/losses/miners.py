"""Miners: the informative pairs and triplets of the gathered batch, as indices.

Every miner reads the (M, M_all) distance or similarity matrix of this rank's anchors against the
global batch (``losses/metric.py:gather``) with its positive and negative masks, so mining sees
every rank's rows and the mined set is the same as one process would mine on the whole batch.
Triplets are (anchor rows, positive columns, negative columns).

"Hard", stated once (FaceNet, Schroff et al. 2015, section 3.2): for a triplet (a, p, n) with
margin m, ``hard`` means d(a, n) < d(a, p) (the negative is closer than the positive);
``semi-hard`` means d(a, p) < d(a, n) < d(a, p) + m (farther than the positive, but within the
margin); ``easy`` means d(a, n) >= d(a, p) + m (no loss). ``batch_hard`` (Hermans et al. 2017)
takes, per anchor, its farthest positive and its closest negative. A miner never hides an empty
result: the training step reports how many triplets or pairs it used.
"""

from __future__ import annotations

import torch

Triplets = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def all_triplets(positive: torch.Tensor, negative: torch.Tensor) -> Triplets:
    """Every (a, p, n) with p a positive and n a negative of anchor a."""
    valid = positive[:, :, None] & negative[:, None, :]  # (M, M_all, M_all)
    a, p, n = valid.nonzero(as_tuple=True)
    return a, p, n


def semi_hard_triplets(
    dist: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, margin: float
) -> Triplets:
    """Every semi-hard triplet: d(a, p) < d(a, n) < d(a, p) + margin."""
    d_ap, d_an = dist[:, :, None], dist[:, None, :]  # (M, M_all, 1), (M, 1, M_all)
    valid = positive[:, :, None] & negative[:, None, :] & (d_an > d_ap) & (d_an < d_ap + margin)
    return valid.nonzero(as_tuple=True)


def hard_triplets(dist: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> Triplets:
    """Every hard triplet: d(a, n) < d(a, p)."""
    d_ap, d_an = dist[:, :, None], dist[:, None, :]
    valid = positive[:, :, None] & negative[:, None, :] & (d_an < d_ap)
    return valid.nonzero(as_tuple=True)


def batch_hard_triplets(
    dist: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor
) -> Triplets:
    """Per anchor with a positive and a negative: its farthest positive and closest negative."""
    anchors = positive.any(1) & negative.any(1)
    far_pos = dist.masked_fill(~positive, float("-inf")).argmax(1)  # (M,)
    near_neg = dist.masked_fill(~negative, float("inf")).argmin(1)
    a = anchors.nonzero(as_tuple=True)[0]
    return a, far_pos[a], near_neg[a]


def multi_similarity_pairs(
    sim: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, epsilon: float = 0.1
) -> torch.Tensor:
    """Multi-similarity mining (Wang et al. 2019, eq. 3-4) on similarities: a negative pair is
    kept when S(a, n) > min_p S(a, p) - epsilon, a positive pair when S(a, p) < max_n S(a, n) +
    epsilon. Returns the (M, M_all) mask of kept pairs. epsilon 0.1: the paper's."""
    hardest_pos = sim.masked_fill(~positive, float("inf")).min(1, keepdim=True).values
    hardest_neg = sim.masked_fill(~negative, float("-inf")).max(1, keepdim=True).values
    keep_neg = negative & (sim > hardest_pos - epsilon)
    keep_pos = positive & (sim < hardest_neg + epsilon)
    return keep_pos | keep_neg
