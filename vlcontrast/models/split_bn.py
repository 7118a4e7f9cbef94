"""Split batch norm: one process normalising each of ``groups`` contiguous slices of the batch
with its own statistics, as ``groups`` devices with their own batch norm would (the MoCo
authors' CIFAR recipe: "SplitBatchNorm" simulates 8 GPUs on one). So a CPU or single-GPU run
reproduces the batch-norm statistics of a multi-GPU one, which the contrastive methods are
sensitive to (with one large BN batch, the statistics leak which views pair up).

The converted layers keep their parameter and buffer names, so checkpoints load with or without
it; in eval mode, or with one group, they are ordinary batch norm. The running statistics are
the mean of the groups' updates, as the devices' would be after synchronisation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class SplitBatchNorm(_BatchNorm):
    def __init__(self, num_features: int, groups: int, **kwargs):
        super().__init__(num_features, **kwargs)
        self.groups = groups

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.groups
        if not self.training or g == 1:
            return super().forward(x)
        n, c = x.shape[:2]
        if n % g:
            raise ValueError(f"model.bn_split: a batch of {n} rows does not split into {g} groups")
        rest = x.shape[2:]
        grouped = x.reshape(g, n // g, c, *rest).transpose(0, 1).reshape(n // g, g * c, *rest)
        mean, var = self.running_mean.repeat(g), self.running_var.repeat(g)
        weight = self.weight.repeat(g) if self.affine else None
        bias = self.bias.repeat(g) if self.affine else None
        momentum = self.momentum if self.momentum is not None else 0.1
        out = F.batch_norm(grouped, mean, var, weight, bias, True, momentum, self.eps)
        with torch.no_grad():
            self.running_mean.copy_(mean.view(g, c).mean(0))
            self.running_var.copy_(var.view(g, c).mean(0))
            self.num_batches_tracked.add_(1)
        return out.reshape(n // g, g, c, *rest).transpose(0, 1).reshape(n, c, *rest)


def split_batch_norm(module: nn.Module, groups: int) -> nn.Module:
    """``module`` with every batch-norm layer (tracking running statistics) made a
    :class:`SplitBatchNorm` of ``groups``; weights and statistics are carried over."""
    if groups <= 1:
        return module
    if isinstance(module, _BatchNorm) and module.track_running_stats:
        split = SplitBatchNorm(
            module.num_features,
            groups,
            eps=module.eps,
            momentum=module.momentum,
            affine=module.affine,
        )
        split.to(module.running_mean.device, module.running_mean.dtype)  # before the copy
        split.load_state_dict(module.state_dict())
        return split
    for name, child in module.named_children():
        setattr(module, name, split_batch_norm(child, groups))
    return module
