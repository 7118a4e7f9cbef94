"""DenseCL (Wang et al. 2021): MoCo v2 plus a dense contrastive term on the feature maps.

The query view goes through the backbone (keeping its feature map: a CNN's last stage, a
ViT's patch tokens), MoCo v2's ``projector`` on the pooled features, and ``dense_head`` (DenseCL's
1x1 convolutions, a per-location MLP) on every location; the key view goes through the momentum
encoder's copies of all three (``target``), which is what encodes the keys (lightly's example
updates a momentum encoder but encodes the keys with the online one). Each query location is
matched to the key location of highest backbone-feature cosine (``losses/densecl.py``) and
contrasted with that key's dense projection, against a second queue holding each key image's
mean dense projection (DenseCL's ``queue2``). Loss: ``(1 - loss_lambda) * global + loss_lambda
* dense``, with loss_lambda 0 for the first ``dense_start_steps`` optimizer steps (DenseCL's
warm-up hook). Both queues are buffers, written after the step with the keys of every rank.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlcontrast import distributed
from vlcontrast.losses.densecl import dense_correspondence, dense_loss, matched_keys
from vlcontrast.losses.ssl import moco_queue_loss
from vlcontrast.models.heads import build_head
from vlcontrast.objective_settings import DenseCLConfig
from vlcontrast.objectives.base import detached, full, view
from vlcontrast.objectives.image_task import feature_width
from vlcontrast.objectives.moco import MoCoObjective, ring_write


def locations(img_map: torch.Tensor) -> torch.Tensor:
    """A feature map as (B, N, F) locations: a CNN's (B, F, H, W) flattened row by row, a ViT's
    (B, N, F) patch tokens as they are."""
    return img_map.flatten(2).transpose(1, 2) if img_map.ndim == 4 else img_map


class DenseCLObjective(MoCoObjective):
    def __init__(self, cfg: DenseCLConfig | None = None):
        super().__init__(cfg if cfg is not None else DenseCLConfig())
        self.pending_dense: torch.Tensor | None = None

    def setup(self, model: nn.Module, cfg: Any, global_batch: int) -> None:
        dtype = next(model.parameters()).dtype
        # before the momentum copy is taken, so the target has its own dense head
        self.dense_head = build_head(self.cfg.dense_head, feature_width(model)).to(dtype)
        super().setup(model, cfg, global_batch)
        dense_dim = self.cfg.dense_head.dim or feature_width(model)
        generator = torch.Generator().manual_seed(cfg.train.seed + 1)
        queue = torch.randn(self.cfg.queue_size, dense_dim, generator=generator).to(dtype)
        self.register_buffer("dense_queue", F.normalize(queue, dim=1))  # (K, D): DenseCL's queue2
        self.register_buffer("dense_queue_ptr", torch.zeros((), dtype=torch.long))

    def online(self) -> nn.ModuleDict:
        return nn.ModuleDict(
            {"model": self.model, "projector": self.projector, "dense_head": self.dense_head}
        )

    def encode(self, encoder: nn.ModuleDict, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """One view through ``encoder`` (the online one or the target): the unit-norm global
        embedding ``emb`` (B, D), dense projections ``grid`` (B, N, D) and backbone features
        ``feat`` (B, N, F) per location, and the unit-norm mean dense projection ``pooled``."""
        out = encoder["model"](images=images, feature_map=True)
        feat = locations(out["img_map"])
        dense = encoder["dense_head"](feat)  # (B, N, D)
        return {
            "emb": F.normalize(encoder["projector"](out["img_feat"]), dim=-1),
            "grid": F.normalize(dense, dim=-1),
            "feat": feat,
            "pooled": F.normalize(dense.mean(dim=1), dim=-1),
        }

    def outputs(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        query = self.encode(self.online(), view(batch, -2))
        key = self.keys(view(batch, -1), lambda images: self.encode(self.target, images))
        index = dense_correspondence(query["feat"].detach(), key["feat"])  # (B, N)
        return {
            "q": query["emb"],
            "k": key["emb"],
            "q_grid": query["grid"],
            "k_matched": matched_keys(key["grid"], index),
            "k_pooled": key["pooled"],
        }

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, Any]:
        t, lam = self.cfg.temperature, self.cfg.loss_lambda
        lam = lam if int(self.steps) >= self.cfg.dense_start_steps else 0.0
        o = {name: full(value) for name, value in outputs.items()}
        queue = self.queue.to(o["q"].dtype, copy=True)
        dense_queue = self.dense_queue.to(o["q"].dtype, copy=True)
        single = moco_queue_loss(o["q"], o["k"], queue, t)
        dense = dense_loss(o["q_grid"], o["k_matched"], dense_queue, t)
        self.pending = distributed.all_gather_no_grad(o["k"].detach())
        self.pending_dense = distributed.all_gather_no_grad(o["k_pooled"].detach())
        metrics = {"loss_single": detached(single), "loss_dense": detached(dense)}
        return {"loss": (1 - lam) * single + lam * dense, "metrics": metrics}

    def after_step(self, step: int) -> None:
        super().after_step(step)  # momentum update, step count, the global queue
        if self.pending_dense is not None:
            ring_write(self.dense_queue, self.dense_queue_ptr, self.pending_dense)
            self.pending_dense = None
