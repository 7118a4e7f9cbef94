"""The interface every training objective implements.

An objective is an ``nn.Module`` so that it can own state that lives across steps (a momentum
encoder, a queue of keys, a step counter): registered parameters and buffers go into
checkpoints with the objective's ``state_dict`` and come back on resume exactly, with no special
case in the checkpointer (open_clip's ``TrainingTask`` does the same). Unlike lightly's MoCo
queue, nothing is registered ``persistent=False``.

An objective has two halves so that gradient caching (``train/grad_cache.py``) can run them
apart: ``outputs(model, batch)`` returns the model's outputs as a dict of tensors (per-sample
embeddings with the batch as dim 0, and scalars such as ``logit_scale``), and ``loss(outputs,
batch)`` turns the outputs of the *whole* batch into ``{"loss": scalar tensor, "metrics": {name:
float}}``. Calling the objective chains them. ``after_step(model, step)`` runs once after every
optimizer step (clamping a temperature, updating a momentum encoder or a queue).

``modalities`` says what a batch must hold: ``("image", "text")`` for image-text objectives,
``("image",)`` for image-only ones, so the data pipeline reads captions only when they are used.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn


class Objective(nn.Module):
    """Turns a batch into ``{"loss": scalar tensor, "metrics": {name: float}}``."""

    modalities: ClassVar[tuple[str, ...]] = ("image", "text")
    # Model settings the objective needs (``model.logit_bias`` when that key is left at None).
    uses_logit_bias: ClassVar[bool] = False

    def outputs(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def forward(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
        return self.loss(self.outputs(model, batch), batch)

    def after_step(self, model: nn.Module, step: int) -> None:
        """Runs after optimizer step ``step`` (1-based); the default does nothing."""
        return None

    @staticmethod
    def unwrap(model: nn.Module) -> nn.Module:
        """The bare model under DDP/accelerate wrappers, for its non-forward methods."""
        return getattr(model, "module", model)


def model_inputs(batch: dict[str, Any], modalities: tuple[str, ...]) -> dict[str, Any]:
    """The keyword arguments of the model contract for the modalities an objective uses."""
    inputs: dict[str, Any] = {}
    if "image" in modalities:
        inputs["images"] = batch["images"]
    if "text" in modalities:
        inputs["input_ids"] = batch["input_ids"]
        inputs["attention_mask"] = batch["attention_mask"]
    return inputs


def detached(value: torch.Tensor) -> float:
    return float(value.detach().float())
