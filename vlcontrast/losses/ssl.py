"""Image-only self-supervised losses as pure functions on tensors (SimCLR's NT-Xent and SupCon
are in ``supcon.py``): MoCo's InfoNCE against a queue (v2) or gathered keys (v3), the BYOL /
SimSiam regression, and Barlow Twins' cross-correlation. Momentum-encoder updates and their
cosine schedule live here too, as functions of parameters.

Exactness across ranks: MoCo's keys carry no gradient, so each rank's mean over its own queries
is the global mean after DDP's average; Barlow Twins' statistics (batch mean, variance and the
D x D cross-correlation) are sums over the global batch, taken with ``all_reduce_with_grad``, so
every rank computes the one global loss and DDP's average of gradients is its gradient (the
reference implementation's plain all-reduce of ``c`` has no such backward, lightly's divided by
the world size: both wrong by a factor).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from vlcontrast import distributed as dist_lib


def moco_queue_loss(
    q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float
) -> torch.Tensor:
    """MoCo v2 InfoNCE: query ``q`` (B, D) against its key ``k`` (B, D, no grad) and the
    ``queue`` (K, D) of earlier keys as negatives, all L2-normalised; mean over the B queries."""
    l_pos = (q * k).sum(dim=1, keepdim=True)  # (B, 1)
    l_neg = q @ queue.T  # (B, K)
    logits = torch.cat([l_pos, l_neg], dim=1) / temperature  # (B, 1 + K)
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


def moco_v3_loss(q: torch.Tensor, k: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo v3 contrastive loss: this rank's queries ``q`` (B, D) against the keys ``k`` (B, D,
    no grad) of every rank; the positive of query i is its own key. Scaled by 2T as in the
    paper's pseudocode. Returns this rank's share of the mean over all ranks' queries (the
    shares average to it, and DDP's gradient average is its gradient, also when ranks hold
    different numbers of queries)."""
    sizes = dist_lib.batch_sizes(len(k), k.device)
    k_all = dist_lib.all_gather_no_grad(k.detach(), sizes)  # (N, D)
    start = sum(sizes[: dist_lib.rank()])
    logits = q @ k_all.T / temperature  # (B, N)
    labels = torch.arange(start, start + len(q), device=q.device)
    summed = F.cross_entropy(logits, labels, reduction="sum")
    return summed * (len(sizes) / sum(sizes)) * (2 * temperature)


def regression_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL's ``2 - 2 cos(p, z)`` for unit-norm prediction ``p`` and target ``z`` (no grad),
    mean over the global batch as this rank's share, exact on uneven splits as above
    (SimSiam's negative cosine is this minus 2, halved)."""
    sizes = dist_lib.batch_sizes(len(p), p.device)
    summed = (2 - 2 * (p * z.detach()).sum(dim=1)).sum()
    return summed * (len(sizes) / sum(sizes))


def _global_sum(x: torch.Tensor) -> torch.Tensor:
    return dist_lib.all_reduce_with_grad(x)


def barlow_twins_loss(
    z_a: torch.Tensor, z_b: torch.Tensor, lambda_offdiag: float = 5e-3, eps: float = 1e-5
) -> torch.Tensor:
    """Barlow Twins (Zbontar et al. 2021): standardise each projection dimension over the
    global batch (biased variance, as the paper's affine-free batch norm), cross-correlate the
    two views (D, D), and penalise ``sum (1 - c_ii)^2 + lambda sum_{i != j} c_ij^2``. Every rank
    returns the same global loss."""
    n = dist_lib.all_reduce(torch.tensor(float(len(z_a)), device=z_a.device))

    def standardise(z: torch.Tensor) -> torch.Tensor:
        mean = _global_sum(z.sum(dim=0)) / n  # (D,)
        var = _global_sum(((z - mean) ** 2).sum(dim=0)) / n  # (D,)
        return (z - mean) / torch.sqrt(var + eps)

    c = _global_sum(standardise(z_a).T @ standardise(z_b)) / n  # (D, D)
    on_diag = (1 - torch.diagonal(c)).pow(2).sum()
    off_diag = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
    return on_diag + lambda_offdiag * off_diag


def cosine_momentum(start: float, end: float, step: int, total: int) -> float:
    """BYOL's schedule: ``end - (end - start) * (cos(pi * step / total) + 1) / 2``, from
    ``start`` at step 0 to ``end`` at ``total``."""
    progress = min(max(step / max(total, 1), 0.0), 1.0)
    return end - (end - start) * (math.cos(math.pi * progress) + 1) / 2


@torch.no_grad()
def momentum_update(target: torch.nn.Module, online: torch.nn.Module, m: float) -> None:
    """``theta_target <- m * theta_target + (1 - m) * theta_online`` for every parameter."""
    for t, o in zip(target.parameters(), online.parameters(), strict=True):
        t.mul_(m).add_(o.detach(), alpha=1 - m)
