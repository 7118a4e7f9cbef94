"""SwAV (Caron et al. 2020): online clustering of multi-crop views against learned prototypes.

Every crop (2 global, N local: ``objectives/multicrop.py``) goes through the backbone and the
projector to a unit-norm embedding, scored against K prototypes: a bias-free linear layer
(``prototypes``) whose rows are unit-norm before every step (normalised at setup and after
every optimizer step, which is SwAV's normalisation at the top of each iteration). The codes of
the two global crops come from Sinkhorn-Knopp over the global batch (``losses/swav.py``: log
domain, float64, autocast off) and each is predicted from every other crop
(``swapped_prediction_loss``). The loss sees the outputs of the whole batch, so gradient caching
does not change the assignment.

Two stabilisers of SwAV's code:
- the prototypes are frozen for ``freeze_prototypes_steps`` (-1: the first epoch, as SwAV's
  scripts, at most 10% of the run; :meth:`SwAVObjective.freeze_steps`): their weight enters
  the forward detached (plus ``0 * weight``, so DDP still sees it used). The optimizer then
  moves it, if at all, along itself (weight decay), which the renormalisation undoes.
- a queue of the global crops' past embeddings (``queue_size`` rows), filled from
  ``queue_start_epochs`` on; once full, its scores against the current prototypes join the
  batch's in Sinkhorn (more rows to balance over at small batches). SwAV keeps one queue per
  rank; here every rank holds the whole queue (the keys of every rank, as MoCo's) and scores its
  own 1/world share of it, so Sinkhorn sees each row once, as SwAV's does. A per-rank buffer
  would not survive DDP, which copies rank 0's buffers to every rank before each forward, and
  a run resumes on any number of ranks. Queue, fill count and step counter are buffers: saved
  in checkpoints, restored exactly.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlcontrast import distributed
from vlcontrast.losses.swav import sinkhorn, swapped_prediction_loss
from vlcontrast.objective_settings import SwAVConfig
from vlcontrast.objectives.base import detached, full
from vlcontrast.objectives.image_task import ImageTask
from vlcontrast.objectives.multicrop import MultiCrop
from vlcontrast.schema import ConfigError


class SwAVObjective(MultiCrop, ImageTask):
    crop_preset = "swav"

    def __init__(self, cfg: SwAVConfig | None = None):
        super().__init__()
        self.cfg = cfg if cfg is not None else SwAVConfig()
        self.pending: torch.Tensor | None = None

    def setup(self, model: nn.Module, cfg: Any, global_batch: int) -> None:
        super().setup(model, cfg, global_batch)
        c = self.cfg
        dtype = next(model.parameters()).dtype
        self.prototypes = nn.Linear(self.proj_dim, c.prototypes, bias=False).to(dtype)
        self.normalize_prototypes()
        if c.queue_size % global_batch:
            fit = global_batch * max(1, c.queue_size // global_batch)
            raise ConfigError(  # whole batches: the queue's rank shares stay whole steps
                f"objective.swav.queue_size: {c.queue_size} is not a multiple of the global "
                f"batch {global_batch}; use e.g. {fit} (or 0: no queue)"
            )
        self.frozen_steps = self.freeze_steps(getattr(getattr(cfg, "train", None), "steps", 0))
        rows = c.queue_size
        self.register_buffer("queue", torch.zeros(2, rows, self.proj_dim, dtype=dtype))
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))  # rows written
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))  # optimizer steps
        self.queue_start = (
            self.epochs_to_steps(c.queue_start_epochs, "objective.swav.queue_start_epochs")
            if rows
            else 0
        )

    def freeze_steps(self, run_steps: int) -> int:
        """``freeze_prototypes_steps``, its -1 resolved: an epoch (SwAV's 313 steps at batch
        4096 when the dataset size is unknown), at most 10% of the run's ``run_steps``."""
        given = self.cfg.freeze_prototypes_steps
        if given >= 0:
            return given
        return self.first_epoch(run_steps, "objective.swav.freeze_prototypes_steps", 313)

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        w = self.prototypes.weight
        w.copy_(F.normalize(w, dim=1))

    def prototype_weight(self) -> torch.Tensor:
        """(K, D) prototypes; while frozen, without a gradient (but still used, for DDP)."""
        w = self.prototypes.weight
        return w.detach() + 0 * w if int(self.steps) < self.frozen_steps else w

    def outputs(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        feat = self.crop_features(batch)  # (B, C, F)
        # one projector pass over every crop, as SwAV's (its batch norm sees them all)
        emb = F.normalize(self.projector(feat.flatten(0, 1)), dim=-1).unflatten(0, feat.shape[:2])
        scores = emb @ self.prototype_weight().T  # (B, C, K)
        return {"scores": scores, "emb_global": emb[:, :2]}

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, Any]:
        c = self.cfg
        scores = full(outputs["scores"])  # (B, C, K)
        emb = outputs["emb_global"].detach()  # (B, 2, D)
        use_queue = self.queue.shape[1] > 0 and int(self.queue_filled) >= self.queue.shape[1]
        codes = {}
        for i in range(2):
            crop_scores = scores[:, i].detach()
            if use_queue:
                with torch.no_grad():
                    queued = self.queue_share(i).to(scores) @ self.prototypes.weight.T.to(scores)
                crop_scores = torch.cat([queued, crop_scores])  # (Q + B, K)
            q = sinkhorn(crop_scores, c.epsilon, c.sinkhorn_iterations)
            codes[i] = q[-len(scores) :]  # the batch's rows
        crops = [scores[:, v] for v in range(scores.shape[1])]
        loss = swapped_prediction_loss(crops, codes, c.temperature)
        if self.queue.shape[1] and int(self.steps) >= self.queue_start:
            self.pending = distributed.all_gather_no_grad(emb)  # (N, 2, D), rank order
        entropy = -(codes[0] * codes[0].clamp(min=1e-12).log()).sum(1).mean()
        return {"loss": loss, "metrics": {"code_entropy": detached(entropy)}}

    def after_step(self, step: int) -> None:
        self.normalize_prototypes()
        self.steps.add_(1)
        if self.pending is not None:
            self.enqueue(self.pending)
            self.pending = None

    def queue_share(self, crop: int) -> torch.Tensor:
        """This rank's 1/world of the queued embeddings of global crop ``crop``: (Q/W, D)."""
        size, world, rank = self.queue.shape[1], distributed.world_size(), distributed.rank()
        return self.queue[crop, rank * size // world : (rank + 1) * size // world]

    @torch.no_grad()
    def enqueue(self, emb: torch.Tensor) -> None:
        """The global batch's (N, 2, D) global-crop embeddings into the queue, oldest
        replaced."""
        size, b = self.queue.shape[1], len(emb)
        rows = (int(self.queue_filled) + torch.arange(b, device=emb.device)) % size
        self.queue[:, rows] = emb.transpose(0, 1).to(self.queue.dtype)
        self.queue_filled.add_(b)
