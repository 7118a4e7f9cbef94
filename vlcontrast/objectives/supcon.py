"""Supervised contrastive objective (Khosla et al. 2020): two augmented views of labelled images;
every other view of the same class in the global batch is a positive (several per anchor), the
rest negatives (``losses/supcon.py:supcon_loss``, exact across ranks). Labels come from the
shards' ``{key}.cls`` member (``data.label_key``), as ImageFolder conversion writes them. Both
views go through the encoder together, as SupContrast's code concatenates them."""

from __future__ import annotations

from typing import Any

import torch

from vlcontrast.losses.supcon import supcon_loss
from vlcontrast.objective_settings import SupConConfig
from vlcontrast.objectives.base import full, halves, two_views
from vlcontrast.objectives.image_task import ImageTask


class SupConObjective(ImageTask):
    needs_labels = True

    def __init__(self, cfg: SupConConfig | None = None):
        super().__init__()
        self.cfg = cfg if cfg is not None else SupConConfig()

    def outputs(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        emb_a, emb_b = halves(self.embed(two_views(batch, self.bn_groups))["emb"], self.bn_groups)
        return {"emb_a": emb_a, "emb_b": emb_b, "labels": batch["labels"]}

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, Any]:
        emb = torch.cat([full(outputs["emb_a"]), full(outputs["emb_b"])])  # (2B, D)
        labels = torch.cat([outputs["labels"], outputs["labels"]])  # (2B,)
        return {"loss": supcon_loss(emb, labels, self.cfg.temperature), "metrics": {}}
