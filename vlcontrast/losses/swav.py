"""SwAV's online clustering (Caron et al. 2020): codes from the Sinkhorn-Knopp algorithm and the
swapped-prediction loss, as pure functions, exact across ranks.

``sinkhorn`` turns (B, K) prototype scores into codes: a soft assignment of each sample to the
K prototypes whose prototype marginals are uniform over the *global* batch (the sums run over
every rank, as in the paper's ``distributed_sinkhorn``). Two traps of the reference code are
closed here: ``exp(scores / eps)`` at eps 0.05 is about e^20 for unit-norm scores and overflows
half precision (and any precision for unnormalised scores), so the iterations run in the log
domain (every normalisation a log-sum-exp, over all ranks where the sum runs over the batch), in
float64 with autocast off: nothing overflows and no prototype's row underflows to zero; and the
codes are computed once for the whole contrastive batch, so
gradient caching does not change the assignment.

``swapped_prediction_loss`` predicts the code of each assigned crop from every other crop:
``-sum_k q_k log softmax(scores / T)_k``, averaged over the crops and the global batch. Each rank
divides its sum by the global row count times the world size, so after DDP's average of the
gradients every parameter holds the gradient of the global mean, uneven batches included.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from vlcontrast import distributed


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, eps: float = 0.05, iters: int = 3) -> torch.Tensor:
    """(B, K) scores of this rank's rows -> (B, K) codes (each row sums to 1), balanced over the
    prototypes across the rows of all ranks. Float64 in the log domain, outside autocast."""
    with torch.autocast(scores.device.type, enabled=False):
        log_q = (scores.detach().double() / eps).T  # (K, B)
        k = log_q.shape[0]
        rows = distributed.all_reduce(torch.tensor(float(log_q.shape[1]), device=log_q.device))
        log_rows = torch.log(rows.double())
        log_q = log_q - _global_logsumexp(log_q.reshape(1, -1), dim=1)  # total mass 1
        for _ in range(iters):
            log_q = log_q - _global_logsumexp(log_q, dim=1) - math.log(k)  # prototypes: 1/K
            log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) - log_rows  # rows: 1/B
        q = torch.exp(log_q + log_rows)  # each sample's code sums to 1
    return q.T.to(scores.dtype if scores.is_floating_point() else torch.float32)


def _global_logsumexp(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``logsumexp`` along ``dim`` over the rows of every rank (``dim`` is the batch)."""
    local = torch.logsumexp(x, dim=dim, keepdim=True)
    if distributed.world_size() == 1:
        return local
    import torch.distributed as dist

    top = distributed.all_reduce(local.clone(), op=dist.ReduceOp.MAX)
    total = distributed.all_reduce(torch.exp(local - top))
    return top + torch.log(total)


def swapped_prediction_loss(
    scores: list[torch.Tensor], codes: dict[int, torch.Tensor], temperature: float = 0.1
) -> torch.Tensor:
    """SwAV's loss: for each crop ``i`` in ``codes`` (the global crops), its (B, K) codes are
    predicted from every other crop's (B, K) scores at ``temperature``; the mean over the pairs
    and the global batch."""
    if not codes:
        raise ValueError("swapped_prediction_loss: give the codes of at least one crop")
    rows = scores[0].shape[0]
    dtype = torch.promote_types(scores[0].dtype, torch.float32)  # half precision -> float32
    total = scores[0].new_zeros((), dtype=dtype)
    for i, q in codes.items():
        others = [v for v in range(len(scores)) if v != i]
        for v in others:
            log_p = F.log_softmax(scores[v].to(dtype) / temperature, dim=1)  # (B, K)
            total = total - (q.to(dtype) * log_p).sum() / len(others)
    count = distributed.all_reduce(torch.tensor(float(rows), dtype=dtype, device=total.device))
    return total * distributed.world_size() / (count.clamp(min=1) * len(codes))
