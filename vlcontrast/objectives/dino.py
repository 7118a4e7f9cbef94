"""DINO (Caron et al. 2021): self-distillation with no labels, on multi-crop views.

The student (backbone, ``projector``: DINO's 3-layer GELU MLP to a 256-d bottleneck, then
``last_layer``) sees every crop; the teacher, a momentum copy of all three (``target``, cosine
schedule from ``momentum`` to ``momentum_end``), sees the two global crops only. The loss
(``losses/dino.py``) makes the student's softmax at ``student_temp`` match the teacher's
centred, sharpened softmax on the other crops. The centre is a buffer, updated after every step
with the teacher's mean output over the global batch, so it is saved and restored with the
teacher.

``last_layer`` is DINO's weight-normed linear layer: the bottleneck output, L2-normalised,
times ``g * v / ||v||`` row by row, with the gain ``g`` fixed at 1 (``norm_last_layer``, DINO's
default for ViT-S) or trained from 1. It is frozen for ``freeze_last_layer_epochs`` (DINO cancels
its gradient in the first epoch): its weight enters the forward detached (plus ``0 * v``, so
DDP sees it used); weight decay can then only shrink ``v``, which the normalisation undoes.
The teacher temperature warms up linearly from ``warmup_teacher_temp`` over
``warmup_teacher_temp_epochs``, counted in steps.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlcontrast.distributed import print0
from vlcontrast.losses.dino import center_update, dino_loss, teacher_temperature
from vlcontrast.objective_settings import DINOConfig
from vlcontrast.objectives.base import detached, full
from vlcontrast.objectives.momentum import MomentumObjective
from vlcontrast.objectives.multicrop import MultiCrop


class WeightNormLinear(nn.Module):
    """``x / ||x|| @ (g * v / ||v||).T``: DINO's last layer (weight norm over each output row,
    ``weight_g`` initialised at 1; without ``trainable_gain`` it stays 1 and is no parameter)."""

    def __init__(self, in_dim: int, out_dim: int, trainable_gain: bool = False):
        super().__init__()
        self.weight_v = nn.Parameter(nn.Linear(in_dim, out_dim, bias=False).weight.detach())
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1)) if trainable_gain else None
        self.frozen = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.weight_v
        if self.frozen:
            v = v.detach() + 0 * v
        weight = F.normalize(v, dim=1)  # (K, H)
        if self.weight_g is not None:
            weight = self.weight_g * weight
        return F.normalize(x, dim=-1) @ weight.T  # (..., K)


# ViT-S/16's parameters (timm's vit_small_patch16_224 without its classifier: 21.7M), the
# smallest backbone DINO trained with its 65,536 outputs (ResNet-50's 23.5M is above it)
FULL_HEAD_FROM = 21_000_000


def fitted_out_dim(params: int) -> int:
    """``out_dim: 0``: DINO's 65,536 outputs for a backbone of ``params`` parameters, from
    ViT-S/16's size up, 4,096
    below it, where the last layer (256 x 65,536 = 16.8M weights) would outweigh the backbone:
    DINO's authors released the 4,096-output ablation (dino_k4096), solo-learn trains CIFAR
    with 4,096, and on the README's tiny ViT the smaller head halves the step time
    (``benchmarks/dino_head.py``)."""
    return 65536 if params >= FULL_HEAD_FROM else 4096


class DINOObjective(MultiCrop, MomentumObjective):
    crop_preset = "dino"

    def __init__(self, cfg: DINOConfig | None = None):
        super().__init__()
        self.cfg = cfg if cfg is not None else DINOConfig()
        self.pending: torch.Tensor | None = None

    def setup(self, model: nn.Module, cfg: Any, global_batch: int) -> None:
        c = self.cfg
        if not c.out_dim:  # written into the config, so the saved run rebuilds the same head
            tower = model.image if isinstance(getattr(model, "image", None), nn.Module) else model
            params = sum(p.numel() for p in tower.parameters())
            c.out_dim = fitted_out_dim(params)
            print0(
                f"note: objective.dino.out_dim=0 -> {c.out_dim} (an image tower of "
                f"{params / 1e6:.1f}M parameters; DINO's 65,536 from "
                f"{FULL_HEAD_FROM / 1e6:g}M up, as ViT-S/16's 21.7M)"
            )
        dtype = next(model.parameters()).dtype
        bottleneck = c.projector.dim or int(model.image.num_features)
        head = WeightNormLinear(bottleneck, c.out_dim, trainable_gain=not c.norm_last_layer)
        self.last_layer = head.to(dtype)  # before the momentum copy is taken
        super().setup(model, cfg, global_batch)
        self.register_buffer("center", torch.zeros(c.out_dim, dtype=torch.float32))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        key = "objective.dino"
        freeze = f"{key}.freeze_last_layer_epochs"
        if c.freeze_last_layer_epochs < 0:  # one epoch, as DINO's default, at most 10% of the run
            run_steps = getattr(getattr(cfg, "train", None), "steps", 0)
            self.freeze_steps = self.first_epoch(run_steps, freeze, 0)
        else:
            self.freeze_steps = self.epochs_to_steps(c.freeze_last_layer_epochs, freeze)
        self.warmup_steps = self.epochs_to_steps(
            c.warmup_teacher_temp_epochs, f"{key}.warmup_teacher_temp_epochs"
        )

    def online(self) -> nn.ModuleDict:
        return nn.ModuleDict(
            {"model": self.model, "projector": self.projector, "last_layer": self.last_layer}
        )

    def outputs(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        self.last_layer.frozen = int(self.steps) < self.freeze_steps
        feat = self.crop_features(batch)  # (B, C, F)
        student = self.last_layer(self.projector(feat.flatten(0, 1))).unflatten(0, feat.shape[:2])
        return {"student": student, "teacher": self.teacher(batch)}

    @torch.no_grad()
    def teacher(self, batch: dict[str, Any]) -> torch.Tensor:
        """The momentum teacher's outputs on the global crops: (B, 2, K)."""
        crops = batch["views"]["global"]
        b, count = crops.shape[:2]
        feat = self.target["model"](images=crops.transpose(0, 1).flatten(0, 1))["img_feat"]
        out = self.target["last_layer"](self.target["projector"](feat))  # (count·B, K)
        return out.view(count, b, -1).transpose(0, 1)

    def teacher_temp(self) -> float:
        c = self.cfg
        step = int(self.steps)
        return teacher_temperature(step, self.warmup_steps, c.warmup_teacher_temp, c.teacher_temp)

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, Any]:
        c = self.cfg
        student, teacher = full(outputs["student"]), full(outputs["teacher"])
        center = self.center.to(teacher.dtype)
        temp = self.teacher_temp()
        loss = dino_loss(student, teacher, center, c.student_temp, temp)
        self.pending = center_update(self.center, teacher, c.center_momentum)
        probs = F.softmax((teacher[:, 0].detach() - center) / temp, dim=-1)
        entropy = -(probs * probs.clamp(min=1e-12).log()).sum(-1).mean()
        return {"loss": loss, "metrics": {"teacher_entropy": detached(entropy)}}

    def after_step(self, step: int) -> None:
        self.update_target(step)
        self.steps.add_(1)
        if self.pending is not None:
            self.center.copy_(self.pending)
            self.pending = None
