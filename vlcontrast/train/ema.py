"""Model EMA (``train.ema``): an exponential moving average of the shared model's weights,
``ema <- decay * ema + (1 - decay) * weights`` after every optimizer step, as timm's
``ModelEmaV3`` keeps it.

The average covers every floating tensor of the model's state (weights and batch-norm
statistics) in the model's own dtype; integer tensors (batch-norm counters) are copied. With
``train.ema_warmup`` the decay at step ``s`` is ``min(decay, 1 - (1 + s)^(-2/3))`` (timm's
warm-up with gamma 1, power 2/3), so the first steps are not averaged with the random
initialisation for thousands of steps; without it, the decay is constant. It is a named
checkpoint part (``ema``: its tensors in ``state.safetensors``), so it resumes bit-exactly, and
``vlcontrast eval|export --weights ema`` reads it (``models/load.py:load_ema_weights``).
Under DDP every rank holds the same weights after a step, so every rank's average is the same.
Under FSDP (``train.fsdp``) the model's state holds DTensors, so the average does too: each rank
averages its own shard, in place, and the EMA costs 1/world of the weights per rank. A checkpoint
gathers it one tensor at a time (``full_tensor``, a collective that every rank's save already
runs) into ``state.safetensors``, so ``--weights ema`` reads an FSDP run's EMA as a DDP run's;
on resume each rank copies its own region back, whatever the number of ranks of either run.
OpenCLIP's EMA was lost on resume until 2026; here it is part of every checkpoint.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def ema_decay(step: int, decay: float, warmup: bool) -> float:
    """The decay applied after optimizer step ``step`` (1-based)."""
    if not warmup:
        return decay
    return min(decay, 1 - (1 + step) ** (-2 / 3))


class ModelEma:
    """The average of ``model``'s state; ``update(step)`` after each optimizer step."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True):
        self.model, self.decay, self.warmup = model, decay, warmup
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, step: int) -> None:
        d = ema_decay(step, self.decay, self.warmup)
        for name, value in self.model.state_dict().items():
            average = self.shadow[name]
            if average.is_floating_point():
                average.lerp_(value.detach().to(average.dtype), 1 - d)
            else:
                average.copy_(value)

    def state_dict(self) -> dict[str, Any]:
        """The whole average (a collective under FSDP: every rank calls it)."""
        return {"weights": {name: _whole(value) for name, value in self.shadow.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        weights = state["weights"]
        if set(weights) != set(self.shadow):
            missing = sorted(set(self.shadow) ^ set(weights))
            raise RuntimeError(f"the checkpoint's EMA holds other tensors (first: {missing[0]})")
        for name, value in weights.items():
            _copy_region(self.shadow[name], value)


def _is_dtensor(value: torch.Tensor) -> bool:
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(value, DTensor)


def _whole(value: torch.Tensor) -> torch.Tensor:
    """``value`` whole on the CPU: a DTensor shard is gathered (one tensor at a time)."""
    return value.full_tensor().cpu() if _is_dtensor(value) else value


@torch.no_grad()
def _copy_region(average: torch.Tensor, whole: torch.Tensor) -> None:
    """Load ``whole`` into ``average``; a DTensor takes only this rank's region of it."""
    if not _is_dtensor(average):
        average.copy_(whole)
        return
    from vlcontrast.train.sharded_checkpoint import local_piece

    local, offset = local_piece(average)
    region = tuple(
        slice(start, start + size) for start, size in zip(offset, local.shape, strict=True)
    )
    local.copy_(whole[region])
