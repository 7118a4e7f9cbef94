"""The interface every training objective implements.

An objective has two halves so that gradient caching (``train/grad_cache.py``) can run them
apart: ``forward(model, batch)`` returns the model's outputs as a dict of tensors (per-sample
embeddings with the batch as dim 0, and scalars such as ``logit_scale``), and ``loss(outputs,
batch)`` turns the outputs of the *whole* batch into ``{"loss": scalar tensor, "metrics": {name:
float}}``. ``__call__`` chains them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class Objective:
    """Turns a batch into ``{"loss": scalar tensor, "metrics": {name: float}}``.

    ``after_step`` runs once after every optimizer step (clamping a temperature, updating a
    momentum encoder or a queue); the default does nothing.
    """

    def forward(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def __call__(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
        return self.loss(self.forward(model, batch), batch)

    def after_step(self, model: nn.Module) -> None:
        return None

    @staticmethod
    def unwrap(model: nn.Module) -> nn.Module:
        """The bare model under DDP/accelerate wrappers, for its non-forward methods."""
        return getattr(model, "module", model)


def detached(value: torch.Tensor) -> float:
    return float(value.detach().float())
