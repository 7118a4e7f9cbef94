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
        return {"weights": self.shadow}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        weights = state["weights"]
        if set(weights) != set(self.shadow):
            missing = sorted(set(self.shadow) ^ set(weights))
            raise RuntimeError(f"the checkpoint's EMA holds other tensors (first: {missing[0]})")
        for name, value in weights.items():
            self.shadow[name].copy_(value)
