"""DINO's self-distillation loss and its centre (Caron et al. 2021), as pure functions, exact
across ranks.

The teacher's outputs on the global crops, centred and sharpened (``softmax((t - c) / T_t)``),
are the targets of the student's outputs on every other crop (``log_softmax(s / T_s)``): the
cross-entropy averaged over the (teacher crop, student crop) pairs with different crops and over
the global batch. Each rank divides its sum by the global row count times the world size, so
DDP's average of gradients is the gradient of the global mean, uneven batches included (DINO's
code takes each rank's mean, exact only for equal batches). The centre is an exponential moving
average of the teacher's mean output over the global batch (``center_update``: the sum is
all-reduced, then divided by the global row count, as DINO's ``update_center``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlcontrast import distributed


def dino_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    center: torch.Tensor,
    student_temp: float = 0.1,
    teacher_temp: float = 0.04,
) -> torch.Tensor:
    """``student`` (B, C, K) outputs on all C crops, the global ones first; ``teacher`` (B, G,
    K) on the G global crops (no gradient); ``center`` (K,). This rank's share of the mean over
    the pairs (teacher crop g, student crop v != g) and the global batch."""
    targets = F.softmax((teacher.detach() - center) / teacher_temp, dim=-1)  # (B, G, K)
    log_p = F.log_softmax(student / student_temp, dim=-1)  # (B, C, K)
    total, pairs = student.new_zeros(()), 0
    for g in range(teacher.shape[1]):
        for v in range(student.shape[1]):
            if v != g:
                total = total - (targets[:, g] * log_p[:, v]).sum()
                pairs += 1
    rows = distributed.all_reduce(torch.tensor(float(len(student)), device=student.device))
    return total * distributed.world_size() / (rows.clamp(min=1) * pairs).to(total.dtype)


@torch.no_grad()
def center_update(center: torch.Tensor, teacher: torch.Tensor, momentum: float) -> torch.Tensor:
    """``center * m + mean(teacher) * (1 - m)``, the mean over the global batch's rows and
    global crops (``teacher``: this rank's (B, G, K))."""
    summed = distributed.all_reduce(teacher.detach().sum(dim=(0, 1)).to(center.dtype))  # (K,)
    count = distributed.all_reduce(
        torch.tensor(float(teacher.shape[0] * teacher.shape[1]), device=center.device)
    )
    return center * momentum + summed / count.clamp(min=1).to(center.dtype) * (1 - momentum)


def teacher_temperature(step: int, warmup_steps: int, start: float, end: float) -> float:
    """DINO's schedule: linear from ``start`` to ``end`` over ``warmup_steps``, then ``end``
    (per step; DINO steps it per epoch)."""
    if step >= warmup_steps:
        return end
    return start + (end - start) * step / warmup_steps
