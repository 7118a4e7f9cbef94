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
``views`` is how many augmented views of each image it compares (``views.first``/``second``;
0: the one training crop), and ``setup(model, cfg, global_batch)`` runs once before a resume
restores the objective's state, so state shaped by the model (a momentum encoder) exists by
then.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn


class Objective(nn.Module):
    """Turns a batch into ``{"loss": scalar tensor, "metrics": {name: float}}``."""

    modalities: ClassVar[tuple[str, ...]] = ("image", "text")
    # Augmented views per image (data/augment.py); 0: the one training crop
    views: ClassVar[int] = 0
    # Whether batches carry ``labels`` (the class index, ``data.label_key``): supcon
    needs_labels: ClassVar[bool] = False

    bn_groups: int = 1  # model.bn_split: rows are ordered device by device (two_views)

    def setup(self, model: nn.Module, cfg: Any, global_batch: int) -> None:
        """Runs once, after the model is built and before a resume; subclasses call it first."""
        self.bn_groups = max(1, int(getattr(getattr(cfg, "model", None), "bn_split", 0) or 0))

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


def two_views(batch: dict[str, Any], groups: int = 1) -> torch.Tensor:
    """The batch's last two augmented views stacked for one forward pass: (2B, 3, S, S). With
    one group, the first view's B images then the second's; with ``groups`` (``model.bn_split``)
    group by group, both views of each B/groups images together, as each device would hold
    them, so split batch norm sees what that many devices would."""
    images = batch["images"]  # (B, K, 3, S, S)
    if images.dim() < 3 or images.shape[1] < 2:
        raise ValueError(
            f"this objective compares two views per image; the batch has images of shape "
            f"{tuple(images.shape)} (the data pipeline makes them when the objective asks)"
        )
    pair = torch.stack([images[:, -2], images[:, -1]])  # (2, B, 3, S, S)
    b = images.shape[0]
    if b % groups:
        raise ValueError(f"model.bn_split: a batch of {b} does not split into {groups} groups")
    pair = pair.reshape(2, groups, b // groups, *images.shape[2:]).transpose(0, 1)
    return pair.reshape(2 * b, *images.shape[2:])  # (2B, 3, S, S)


def halves(x: torch.Tensor, groups: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(first view's rows, second view's rows) of a :func:`two_views`-ordered (2B, ...) tensor."""
    b = x.shape[0] // 2
    grouped = x.reshape(groups, 2, b // groups, *x.shape[1:])
    return grouped[:, 0].reshape(b, *x.shape[1:]), grouped[:, 1].reshape(b, *x.shape[1:])


def full(x: torch.Tensor) -> torch.Tensor:
    """Half-precision outputs (autocast) in float32 for the loss; float32/64 as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
