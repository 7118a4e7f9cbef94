"""SimCLR objective (Chen et al. 2020): two augmented views per image -> NT-Xent over the 2N
views gathered from all ranks, each view's positive its twin and the other 2N - 2 its
negatives (``losses/supcon.py:nt_xent_loss``, exact across ranks).

Both views go through the encoder as one batch of 2N, as SimCLR's code does (it concatenates
the views and its global batch norm normalises over both); the projector is SimCLR v2's, with
an output batch norm (``objective.simclr.projector``)."""

from __future__ import annotations

from typing import Any

import torch

from vlcontrast.losses.supcon import nt_xent_loss
from vlcontrast.objective_settings import SimCLRConfig
from vlcontrast.objectives.base import detached, full, halves, two_views
from vlcontrast.objectives.image_task import ImageTask


class SimCLRObjective(ImageTask):
    def __init__(self, cfg: SimCLRConfig | None = None):
        super().__init__()
        self.cfg = cfg if cfg is not None else SimCLRConfig()

    def outputs(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        emb = self.embed(two_views(batch, self.bn_groups))["emb"]  # (2B, D)
        emb_a, emb_b = halves(emb, self.bn_groups)
        return {"emb_a": emb_a, "emb_b": emb_b}

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, Any]:
        emb_a, emb_b = full(outputs["emb_a"]), full(outputs["emb_b"])
        loss = nt_xent_loss(emb_a, emb_b, self.cfg.temperature)
        positive = detached((emb_a * emb_b).sum(dim=1).mean())
        return {"loss": loss, "metrics": {"positive_cosine": positive}}
