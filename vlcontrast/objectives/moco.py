"""MoCo objectives: v2 (He et al. 2020; Chen et al. 2020b) with a queue of keys, v3 (Chen et
al. 2021) with a predictor and the keys of the global batch.

MoCo v2: the query is the online encoder's embedding of one view, the key the momentum
encoder's of the other; negatives are the ``queue_size`` latest keys of all ranks. As in MoCo's
code, each view goes through one encoder only (view 0 -> queries, view 1 -> keys): nothing is
computed that the loss does not use (``benchmarks/moco_step.py`` measures it against pushing
both views through both encoders). Keys of the current step are enqueued in ``after_step``,
after the loss, so they are never among their own negatives; the symmetric variant (both views
as queries) still enqueues one key per image per step. The queue and its write pointer are
buffers (not ``persistent=False`` as in lightly), so resume is exact.
MoCo v3: symmetric, query = predictor output, keys gathered from every rank, momentum on a
cosine schedule from 0.99 to 1; each view through each encoder alone, as its code does.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from vlcontrast import distributed as dist_lib
from vlcontrast.losses.ssl import moco_queue_loss, moco_v3_loss
from vlcontrast.objective_settings import MoCoConfig, MoCoV3Config
from vlcontrast.objectives.base import detached, full, view
from vlcontrast.objectives.momentum import MomentumObjective
from vlcontrast.schema import ConfigError


class MoCoObjective(MomentumObjective):
    def __init__(self, cfg: MoCoConfig | None = None):
        super().__init__()
        self.cfg = cfg if cfg is not None else MoCoConfig()
        self.pending: torch.Tensor | None = None

    def setup(self, model, cfg, global_batch: int) -> None:
        super().setup(model, cfg, global_batch)
        if self.cfg.queue_size % global_batch:
            fit = global_batch * max(1, self.cfg.queue_size // global_batch)
            raise ConfigError(
                f"objective.moco.queue_size: {self.cfg.queue_size} is not a multiple of the "
                f"global batch {global_batch}; use e.g. {fit}"
            )
        self.warn_queue_over_data(global_batch)
        generator = torch.Generator().manual_seed(cfg.train.seed)
        dtype = next(model.parameters()).dtype
        queue = torch.randn(self.cfg.queue_size, self.proj_dim, generator=generator).to(dtype)
        queue = F.normalize(queue, dim=1)
        self.register_buffer("queue", queue)  # (K, D) as MoCo: random unit vectors to start
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))  # seeds shuffle BN
        self.seed = int(cfg.train.seed)

    def warn_queue_over_data(self, global_batch: int) -> None:
        """A warning when the queue holds more keys than an epoch has images: then every
        image's own keys from earlier epochs are among its negatives (MoCo's 65536 keys are 5%
        of ImageNet; the digits benchmark's 1024, 71% of its images)."""
        images = self.epoch_steps * global_batch
        key = f"objective.{type(self).__name__.removesuffix('Objective').lower()}.queue_size"
        if images and self.cfg.queue_size > images:
            fit = global_batch * max(1, images // 2 // global_batch)
            dist_lib.print0(
                f"warning: {key}={self.cfg.queue_size} keys, more than the {images} images an "
                f"epoch reads: each image's own earlier keys would be among its negatives; "
                f"set {key} to at most {images} (e.g. {fit})"
            )

    def outputs(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        x_a, x_b = view(batch, -2), view(batch, -1)
        out = {"q_a": self.embed(x_a)["emb"], "k_b": self.keys(x_b)}
        if self.cfg.symmetric:
            out.update(q_b=self.embed(x_b)["emb"], k_a=self.keys(x_a))
        return out

    @torch.no_grad()
    def keys(self, images: torch.Tensor, encode=None):
        """The momentum encoder's embeddings of ``images`` (``encode``: another function of the
        images, returning a tensor or a dict of tensors with the batch first). MoCo's shuffle
        BN, where the key encoder's batch norm normalises slices of the global batch (split
        into ``model.bn_split`` groups, or one slice per rank under DDP): the global batch goes
        through the key encoder in a random order (seeded by the step, the same on every rank),
        so a query and its key are normalised with different images and cannot share batch
        statistics. Across ranks, as MoCo's ``_batch_shuffle_ddp``: the images are gathered,
        each rank encodes its slice of the shuffled batch, and the outputs are gathered and put
        back in order."""
        encode = encode or self.target_embed
        if (self.bn_groups == 1 and dist_lib.world_size() == 1) or not self.key_batch_norm():
            return encode(images)
        sizes = dist_lib.batch_sizes(len(images), images.device)
        every = dist_lib.all_gather_no_grad(images, sizes)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + int(self.steps))
        order = torch.randperm(len(every), generator=generator).to(images.device)
        start = sum(sizes[: dist_lib.rank()])
        mine = slice(start, start + len(images))
        inverse = torch.argsort(order)
        shuffled = encode(every[order[mine]])

        def unshuffle(value: torch.Tensor) -> torch.Tensor:
            return dist_lib.all_gather_no_grad(value, sizes)[inverse][mine]

        if isinstance(shuffled, dict):
            return {name: unshuffle(value) for name, value in shuffled.items()}
        return unshuffle(shuffled)

    def key_batch_norm(self) -> bool:
        """Whether the key encoder has batch norm over each device's rows (not torch's
        SyncBatchNorm, whose statistics are the global batch's whatever the order)."""
        return any(
            isinstance(m, _BatchNorm) and not isinstance(m, nn.SyncBatchNorm)
            for m in self.target.modules()
        )

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, Any]:
        q_a, k_b = full(outputs["q_a"]), full(outputs["k_b"])
        queue = self.queue.to(q_a.dtype, copy=True)  # this step's negatives, kept from the enqueue
        loss = moco_queue_loss(q_a, k_b, queue, self.cfg.temperature)
        if self.cfg.symmetric:
            q_b, k_a = full(outputs["q_b"]), full(outputs["k_a"])
            loss = (loss + moco_queue_loss(q_b, k_a, queue, self.cfg.temperature)) / 2
        self.pending = dist_lib.all_gather_no_grad(k_b.detach())  # (N, D), rank order
        positive = detached((q_a * k_b).sum(dim=1).mean())
        return {"loss": loss, "metrics": {"positive_cosine": positive}}

    def after_step(self, step: int) -> None:
        self.update_target(step)
        self.steps.add_(1)
        if self.pending is not None:
            self.enqueue(self.pending)
            self.pending = None

    def enqueue(self, keys: torch.Tensor) -> None:
        ring_write(self.queue, self.queue_ptr, keys)


@torch.no_grad()
def ring_write(queue: torch.Tensor, ptr: torch.Tensor, keys: torch.Tensor) -> None:
    """Write ``keys`` (N, D) into ``queue`` (K, D) at ``ptr``, wrapping around; the oldest keys
    are replaced and ``ptr`` moves on."""
    start, size = int(ptr), len(queue)
    rows = (start + torch.arange(len(keys), device=keys.device)) % size
    queue[rows] = keys.to(queue.dtype)
    ptr.fill_((start + len(keys)) % size)


class MoCoV3Objective(MomentumObjective):
    def __init__(self, cfg: MoCoV3Config | None = None):
        super().__init__()
        self.cfg = cfg if cfg is not None else MoCoV3Config()

    def outputs(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        x_a, x_b = view(batch, -2), view(batch, -1)
        out = {"q_a": self.embed(x_a)["pred"], "q_b": self.embed(x_b)["pred"]}
        return {**out, "k_a": self.target_embed(x_a), "k_b": self.target_embed(x_b)}

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, Any]:
        t = self.cfg.temperature
        o = {name: full(value) for name, value in outputs.items()}
        loss = moco_v3_loss(o["q_a"], o["k_b"], t) + moco_v3_loss(o["q_b"], o["k_a"], t)
        positive = detached((o["q_a"] * o["k_b"]).sum(dim=1).mean())
        return {"loss": loss, "metrics": {"positive_cosine": positive}}
