"""The interface every training objective implements."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class Objective:
    """Turns a batch into ``{"loss": scalar tensor, "metrics": {name: float}}``.

    ``after_step`` runs once after every optimizer step (clamping a temperature, updating a
    momentum encoder or a queue); the default does nothing.
    """

    def __call__(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def after_step(self, model: nn.Module) -> None:
        return None

    @staticmethod
    def unwrap(model: nn.Module) -> nn.Module:
        """The bare model under DDP/accelerate wrappers, for its non-forward methods."""
        return getattr(model, "module", model)


def detached(value: torch.Tensor) -> float:
    return float(value.detach().float())
