"""A test-fixture objective, not a product feature: a method with its own trainable head and
its own buffer, defined in this one file plus a registry entry (``OBJECTIVES["probe"] =
"tests.probe_objective:ProbeObjective"``), to show that the task design needs nothing else.

The head maps the backbone's pooled features to 8 dimensions; the buffer ``center`` is a
momentum mean of the head's outputs over the global batch (as DINO's centre), updated after
every step and subtracted before the NT-Xent loss of the two views (exact across ranks)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlcontrast import distributed
from vlcontrast.losses.supcon import nt_xent_loss
from vlcontrast.objectives.base import Objective, full, view


@dataclass
class ProbeConfig:
    temperature: float = 0.5
    center_momentum: float = 0.9


class ProbeObjective(Objective):
    modalities = ("image",)
    views = 2

    def __init__(self, cfg: ProbeConfig | None = None):
        super().__init__()
        self.cfg = cfg if cfg is not None else ProbeConfig()
        self.pending: torch.Tensor | None = None

    def setup(self, model: nn.Module, cfg: Any, global_batch: int) -> None:
        super().setup(model, cfg, global_batch)
        dtype = next(model.parameters()).dtype
        self.head = nn.Linear(model.image.num_features, 8).to(dtype)
        self.register_buffer("center", torch.zeros(8, dtype=dtype))

    def outputs(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        h_a = self.head(self.model(images=view(batch, -2))["img_feat"])
        h_b = self.head(self.model(images=view(batch, -1))["img_feat"])
        return {"h_a": h_a, "h_b": h_b}

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, Any]:
        h_a, h_b = full(outputs["h_a"]), full(outputs["h_b"])
        center = self.center.to(h_a.dtype)
        emb_a, emb_b = F.normalize(h_a - center, dim=-1), F.normalize(h_b - center, dim=-1)
        # the global batch's mean of the head outputs, for the centre after this step
        rows = torch.tensor([float(len(h_a))], dtype=h_a.dtype, device=h_a.device)
        summed = torch.cat([h_a.detach().sum(0), h_b.detach().sum(0), rows])
        self.pending = distributed.all_reduce(summed.clone())
        return {"loss": nt_xent_loss(emb_a, emb_b, self.cfg.temperature), "metrics": {}}

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        if self.pending is not None:
            mean = self.pending[:-1].view(2, -1).sum(0) / (2 * self.pending[-1])
            m = self.cfg.center_momentum
            self.center.mul_(m).add_(mean.to(self.center.dtype), alpha=1 - m)
            self.pending = None


class MultiCropProbe(ProbeObjective):
    """The same head and buffer on multi-crop views: 2 global crops at the training size and 6
    local ones at half of it (SwAV's and DINO's shape of views), all from one decode; the local
    crops' mean embedding is contrasted with the first global crop's. For a CNN tower, which
    takes any size."""

    @classmethod
    def view_groups(cls, cfg: Any) -> list:
        from vlcontrast.data.view_presets import ViewConfig, ViewGroup

        size = cfg.image.image_size
        return [
            ViewGroup("global", size, 2, [ViewConfig(scale=[0.4, 1.0])]),
            ViewGroup("local", size // 2, 6, [ViewConfig(scale=[0.05, 0.4], blur=0.0)]),
        ]

    def outputs(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        views = batch["views"]
        b, g = views["global"].shape[:2]
        n_local = views["local"].shape[1]
        h_global = self.head(self.model(images=views["global"].flatten(0, 1))["img_feat"])
        h_local = self.head(self.model(images=views["local"].flatten(0, 1))["img_feat"])
        return {
            "h_a": h_global.view(b, g, -1)[:, 0],
            "h_b": h_local.view(b, n_local, -1).mean(1),
        }
