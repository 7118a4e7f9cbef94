"""The interface every training objective implements: the task, the unit that trains.

An objective is an ``nn.Module`` that, once ``setup`` ran, owns the shared model
(``self.model``: towers and CLIP projection, the inference artifact that ``model.safetensors``
holds) plus the method's own heads (projector, predictor, SLIP's image head) and state (a
momentum encoder, a queue of keys, a step counter). The optimizer, DDP, gradient caching and
the checkpointer see the task, so a method with trainable heads needs no key in
``ModelConfig`` and no case in the loop (open_clip's ``TrainingTask`` does the same). Buffers
are persistent, unlike lightly's MoCo queue, so resume is exact.

An objective has two halves so that gradient caching (``train/grad_cache.py``) can run them
apart: ``forward(batch)`` returns the outputs as a dict of tensors (per-sample embeddings with
the batch as dim 0, and scalars such as ``logit_scale``); it is the call that DDP wraps, so
every trainable parameter is used inside it. ``loss(outputs, batch)`` turns the outputs of the
*whole* batch into ``{"loss": scalar tensor, "metrics": {name: number or 0-dim tensor}}``;
:func:`step_loss` chains them. ``after_step(step)`` runs once after every optimizer step
(clamping a temperature, updating a momentum encoder or a queue).

``modalities`` says what a batch must hold: ``("image", "text")`` for image-text objectives,
``("image",)`` for image-only ones, so the data pipeline reads captions only when they are used.
``views`` is how many augmented views of each image it compares (``views.first``/``second``;
0: the one training crop). ``setup(model, cfg, global_batch)`` runs once, after the model is
built and before a resume restores the task's state, so heads and state shaped by the model
exist by then.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from vlcontrast.distributed import print0
from vlcontrast.schema import ConfigError


class Objective(nn.Module):
    """``forward(batch)`` -> outputs; ``loss(outputs, batch)`` -> ``{"loss", "metrics"}``."""

    modalities: ClassVar[tuple[str, ...]] = ("image", "text")
    # Augmented views per image (data/augment.py); 0: the one training crop
    views: ClassVar[int] = 0
    # Whether batches carry ``labels`` (the class index, ``data.label_key``): supcon
    needs_labels: ClassVar[bool] = False
    # Whether the task needs the model's text tower though its batches hold no text (finetune:
    # the head is made from it)
    uses_text_tower: ClassVar[bool] = False

    bn_groups: int = 1  # model.bn_split: rows are ordered device by device (two_views)
    # optimizer steps per epoch (dataset size / global batch), set by the loop before setup;
    # 0: unknown. Settings counted in epochs (DINO's, SwAV's) become steps with it
    epoch_steps: int = 0

    def setup(self, model: nn.Module, cfg: Any, global_batch: int) -> None:
        """Take the model and build the heads and state; subclasses call it first."""
        self.model = model
        self.bn_groups = max(1, int(getattr(getattr(cfg, "model", None), "bn_split", 0) or 0))

    @classmethod
    def view_groups(cls, cfg: Any) -> list | None:
        """The views this task wants as ``data.view_presets.ViewGroup`` s (any sizes and
        counts: multi-crop), carried by batches as ``views[name]`` (B, count, 3, S, S); None:
        ``views`` two-view crops (``views.first``/``second``) in ``images`` (B, 2, 3, S, S), or
        with ``views`` 0 the one training crop (B, 3, S, S)."""
        return None

    def outputs(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return self.outputs(batch)

    def after_step(self, step: int) -> None:
        """Runs after optimizer step ``step`` (1-based); the default does nothing."""
        return None

    def epochs_to_steps(self, epochs: float, key: str) -> int:
        """``epochs`` of the setting ``key`` in optimizer steps."""
        if not epochs:
            return 0
        if not self.epoch_steps:
            raise ConfigError(
                f"{key}: counts epochs, but the dataset size is unknown, so an epoch has no "
                f"length here; set data.num_samples (or the key to 0)"
            )
        return max(1, round(epochs * self.epoch_steps))

    def first_epoch(self, run_steps: int, key: str, unknown: int) -> int:
        """The steps of a stabiliser that the papers run for the first epoch (SwAV's frozen
        prototypes, DINO's frozen last layer), at most 10% of the run's ``run_steps``;
        ``unknown`` when the epoch's length is; a note says what was chosen for ``key``."""
        epoch = self.epoch_steps or unknown
        steps = min(epoch, max(1, run_steps // 10)) if run_steps and epoch else epoch
        why = "one epoch" if self.epoch_steps else "the epoch's length is unknown"
        capped = f", 10% of this run's {run_steps} steps" if steps < epoch else ""
        print0(f"note: {key}=-1 -> {steps} steps ({why}{capped})")
        return steps

    def owned_state(self) -> dict[str, torch.Tensor]:
        """The heads and state of the method: the task's state without the shared model's."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("model.")}


def step_loss(task: nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
    """``{"loss", "metrics"}`` of ``task`` (bare or DDP-wrapped) on ``batch``."""
    return unwrap(task).loss(task(batch), batch)


def unwrap(module: nn.Module) -> nn.Module:
    """The bare module under DDP/accelerate wrappers, for its non-forward methods."""
    return getattr(module, "module", module)


def model_inputs(batch: dict[str, Any], modalities: tuple[str, ...]) -> dict[str, Any]:
    """The keyword arguments of the model contract for the modalities an objective uses."""
    inputs: dict[str, Any] = {}
    if "image" in modalities:
        inputs["images"] = batch["images"]
    if "text" in modalities:
        inputs["input_ids"] = batch["input_ids"]
        inputs["attention_mask"] = batch["attention_mask"]
    return inputs


def detached(value: torch.Tensor) -> torch.Tensor:
    """A metric as a detached float32 scalar tensor: the loop turns metrics into numbers after
    the step, so a compiled step has no ``.item()`` graph break (tests/test_fast_paths.py)."""
    return value.detach().float()


def view(batch: dict[str, Any], index: int) -> torch.Tensor:
    """Augmented view ``index`` of every image in the batch: (B, 3, S, S) of (B, K, 3, S, S)."""
    images = batch["images"]
    if images.dim() < 3 or images.shape[1] < 2:
        raise ValueError(
            f"this objective compares two views per image; the batch has images of shape "
            f"{tuple(images.shape)} (the data pipeline makes them when the objective asks)"
        )
    return images[:, index]


def two_views(batch: dict[str, Any], groups: int = 1) -> torch.Tensor:
    """The batch's last two augmented views stacked for one forward pass: (2B, 3, S, S). With
    one group, the first view's B images then the second's; with ``groups`` (``model.bn_split``)
    group by group, both views of each B/groups images together, as each device would hold
    them, so split batch norm sees what that many devices would."""
    first, second = view(batch, -2), view(batch, -1)
    pair = torch.stack([first, second])  # (2, B, 3, S, S)
    b = first.shape[0]
    if b % groups:
        raise ValueError(f"model.bn_split: a batch of {b} does not split into {groups} groups")
    pair = pair.reshape(2, groups, b // groups, *first.shape[1:]).transpose(0, 1)
    return pair.reshape(2 * b, *first.shape[1:])  # (2B, 3, S, S)


def halves(x: torch.Tensor, groups: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(first view's rows, second view's rows) of a :func:`two_views`-ordered (2B, ...) tensor."""
    b = x.shape[0] // 2
    grouped = x.reshape(groups, 2, b // groups, *x.shape[1:])
    return grouped[:, 0].reshape(b, *x.shape[1:]), grouped[:, 1].reshape(b, *x.shape[1:])


def full(x: torch.Tensor) -> torch.Tensor:
    """Half-precision outputs (autocast) in float32 for the loss; float32/64 as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
