"""Cross-entropy over class logits, exact across ranks when some labels are missing.

The loss of a global batch is the mean over its *labelled* rows (labels outside ``[0, C)`` are
left out). A rank's own mean would weigh a rank with few labelled rows as much as one with many,
so each rank divides its sum by the global count and multiplies by the world size: after DDP
averages the gradients over ranks, every parameter holds the gradient of the global mean, as
one process on the whole batch would (tests/test_distributed_losses.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlcontrast import distributed


def labelled(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """(B,) bool: the rows whose label is a class."""
    return (labels >= 0) & (labels < classes)


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of (B, C) ``logits`` over the labelled rows of the global batch; 0
    (with a gradient of zeros) when no rank has one."""
    valid = labelled(labels, logits.shape[1])
    target = torch.where(valid, labels, torch.full_like(labels, -100))
    total = F.cross_entropy(logits, target, ignore_index=-100, reduction="sum")
    count = distributed.all_reduce(valid.sum().to(logits.dtype).detach())
    return total * distributed.world_size() / count.clamp(min=1)
