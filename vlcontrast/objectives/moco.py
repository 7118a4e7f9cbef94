"""MoCo objectives: v2 (He et al. 2020; Chen et al. 2020b) with a queue of keys, v3 (Chen et
al. 2021) with a predictor and the keys of the global batch.

MoCo v2: the query is the model's embedding of one view, the key the momentum encoder's of the
other; negatives are the ``queue_size`` latest keys of all ranks. Keys of the current step are
enqueued in ``after_step``, after the loss, so they are never among their own negatives; the
symmetric variant (both views as queries) still enqueues one key per image per step. The queue
and its write pointer are buffers (not ``persistent=False`` as in lightly), so resume is exact.
MoCo v3: symmetric, query = predictor output, keys gathered from every rank, momentum on a
cosine schedule from 0.99 to 1.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlcontrast import distributed as dist_lib
from vlcontrast.losses.ssl import moco_queue_loss, moco_v3_loss
from vlcontrast.objective_settings import MoCoConfig, MoCoV3Config
from vlcontrast.objectives.base import full, halves, two_views
from vlcontrast.objectives.momentum import MomentumObjective
from vlcontrast.schema import ConfigError


class MoCoObjective(MomentumObjective):
    modalities = ("image",)
    views = 2

    def __init__(self, cfg: MoCoConfig | None = None):
        super().__init__()
        self.cfg = cfg if cfg is not None else MoCoConfig()
        self.pending: torch.Tensor | None = None

    def setup(self, model: nn.Module, cfg, global_batch: int) -> None:
        super().setup(model, cfg, global_batch)
        if self.cfg.queue_size % global_batch:
            fit = global_batch * max(1, self.cfg.queue_size // global_batch)
            raise ConfigError(
                f"objective.moco.queue_size: {self.cfg.queue_size} is not a multiple of the "
                f"global batch {global_batch}; use e.g. {fit}"
            )
        bare = self.unwrap(model)
        dim = getattr(bare, "proj_dim", bare.embed_dim)  # keys are projections
        generator = torch.Generator().manual_seed(cfg.train.seed)
        dtype = next(self.unwrap(model).parameters()).dtype
        queue = torch.randn(self.cfg.queue_size, dim, generator=generator).to(dtype)
        queue = F.normalize(queue, dim=1)
        self.register_buffer("queue", queue)  # (K, D) as MoCo: random unit vectors to start
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))  # seeds shuffle BN
        self.seed = int(cfg.train.seed)

    def outputs(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        images = two_views(batch, self.bn_groups)
        q_a, q_b = halves(model(images=images)["img_emb"], self.bn_groups)
        with torch.no_grad():
            k_a, k_b = halves(self.keys(images), self.bn_groups)
        return {"q_a": q_a, "q_b": q_b, "k_a": k_a, "k_b": k_b}

    def keys(self, images: torch.Tensor) -> torch.Tensor:
        """The momentum encoder's embeddings of ``images``. With split batch norm, MoCo's
        shuffle BN: the rows go through the key encoder in a random order (seeded by the step),
        so a query and its key are normalised in different groups and cannot share batch
        statistics; the output is put back in order."""
        if self.bn_groups == 1:
            return self.target(images=images)["img_emb"]
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + int(self.steps))
        order = torch.randperm(len(images), generator=generator).to(images.device)
        shuffled = self.target(images=images[order])["img_emb"]
        return shuffled[torch.argsort(order)]

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, Any]:
        q_a, k_b = full(outputs["q_a"]), full(outputs["k_b"])
        queue = self.queue.to(q_a.dtype, copy=True)  # this step's negatives, kept from the enqueue
        loss = moco_queue_loss(q_a, k_b, queue, self.cfg.temperature)
        if self.cfg.symmetric:
            q_b, k_a = full(outputs["q_b"]), full(outputs["k_a"])
            loss = (loss + moco_queue_loss(q_b, k_a, queue, self.cfg.temperature)) / 2
        self.pending = dist_lib.all_gather_no_grad(k_b.detach())  # (N, D), rank order
        positive = float((q_a * k_b).sum(dim=1).mean().detach())
        return {"loss": loss, "metrics": {"positive_cosine": positive}}

    def after_step(self, model: nn.Module, step: int) -> None:
        self.update_target(model, step)
        self.steps.add_(1)
        if self.pending is not None:
            self.enqueue(self.pending)
            self.pending = None

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write ``keys`` (N, D) at the pointer, wrapping around; oldest keys are replaced."""
        start, size = int(self.queue_ptr), len(self.queue)
        rows = (start + torch.arange(len(keys), device=keys.device)) % size
        self.queue[rows] = keys.to(self.queue.dtype)
        self.queue_ptr.fill_((start + len(keys)) % size)


class MoCoV3Objective(MomentumObjective):
    modalities = ("image",)
    views = 2
    needs_predictor = True

    def __init__(self, cfg: MoCoV3Config | None = None):
        super().__init__()
        self.cfg = cfg if cfg is not None else MoCoV3Config()

    def outputs(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        images = two_views(batch, self.bn_groups)
        q_a, q_b = halves(model(images=images)["img_pred"], self.bn_groups)
        with torch.no_grad():
            k_a, k_b = halves(self.target(images=images)["img_emb"], self.bn_groups)
        return {"q_a": q_a, "q_b": q_b, "k_a": k_a, "k_b": k_b}

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, Any]:
        t = self.cfg.temperature
        o = {name: full(value) for name, value in outputs.items()}
        loss = moco_v3_loss(o["q_a"], o["k_b"], t) + moco_v3_loss(o["q_b"], o["k_a"], t)
        positive = float((o["q_a"] * o["k_b"]).sum(dim=1).mean().detach())
        return {"loss": loss, "metrics": {"positive_cosine": positive}}

    def after_step(self, model: nn.Module, step: int) -> None:
        self.update_target(model, step)
