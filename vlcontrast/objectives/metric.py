"""Metric learning on labelled images (objective ``metric``): the losses that pytorch-metric-
learning's users train face, product and re-identification embeddings with (triplet with
mining, margin contrastive, N-pair, logistic, multi-similarity), exact across ranks.

Each image gives two augmented views (``views.*``); both views' embeddings (the projector's
output, unit-norm, ``objective.metric.projector``) are rows labelled with the image's class
(``data.label_key``), so every sample has a positive in the batch; N-pair pairs the two views.
Mining (``objective.metric.miner``) runs on the distances of the gathered global batch, without
gradient, and the step's metrics report how many triplets or pairs were used, so an empty
mining is seen, never silent (a batch with none stops with a message naming the loss). The
logistic loss's scale and bias are parameters of this task (initialised as SigLIP's: 10, -10).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlcontrast.losses import metric, miners
from vlcontrast.objective_settings import MetricConfig
from vlcontrast.objectives.base import full, halves, two_views
from vlcontrast.objectives.image_task import ImageTask


class MetricObjective(ImageTask):
    needs_labels = True

    def __init__(self, cfg: MetricConfig | None = None):
        super().__init__()
        self.cfg = cfg if cfg is not None else MetricConfig()
        self.cfg.check()

    def setup(self, model: nn.Module, cfg: Any, global_batch: int) -> None:
        super().setup(model, cfg, global_batch)
        if self.cfg.loss == "logistic":
            self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
            self.logit_bias = nn.Parameter(torch.tensor(-10.0))

    def outputs(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        # both views in one forward (SupContrast's and pytorch-metric-learning's batches)
        emb_a, emb_b = halves(self.embed(two_views(batch, self.bn_groups))["proj"], self.bn_groups)
        out = {"emb_a": emb_a, "emb_b": emb_b, "labels": batch["labels"]}
        if self.cfg.loss == "logistic":
            out.update(logit_scale=self.logit_scale.exp(), logit_bias=self.logit_bias)
        return out

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, Any]:
        c = self.cfg
        emb_a, emb_b = full(outputs["emb_a"]), full(outputs["emb_b"])
        if c.loss == "npair":
            a, p = F.normalize(emb_a, dim=-1), F.normalize(emb_b, dim=-1)
            return {"loss": metric.npair_loss(a, p, c.l2_reg), "metrics": {"pairs": len(a)}}
        emb = F.normalize(torch.cat([emb_a, emb_b]), dim=-1)  # (2B, D)
        labels = torch.cat([outputs["labels"], outputs["labels"]])
        if c.loss == "contrastive":
            loss = metric.contrastive_loss(
                emb, labels, c.pos_margin, c.neg_margin, c.distance, c.power
            )
            return {"loss": loss, "metrics": {}}
        if c.loss == "logistic":
            scale, bias = full(outputs["logit_scale"]), full(outputs["logit_bias"])
            return {
                "loss": metric.logistic_loss(emb, labels, scale, bias),
                "metrics": {
                    "logit_scale": float(scale.detach()),
                    "logit_bias": float(bias.detach()),
                },
            }
        g = metric.gather(emb.detach(), labels)
        if c.loss == "multi_similarity":
            pairs = None
            if c.miner == "multi_similarity":
                sim = g.emb @ g.emb_all.T
                pairs = miners.multi_similarity_pairs(sim, g.positive, g.negative, c.epsilon)
            loss = metric.multi_similarity_loss(emb, labels, pairs, c.alpha, c.beta, c.base)
            used = int(pairs.sum()) if pairs is not None else int((~g.is_self).sum())
            return {"loss": loss, "metrics": {"pairs": used}}
        triplets = self.mine(g, c)
        loss = metric.triplet_loss(
            emb, labels, triplets, c.margin, c.distance, swap=c.swap, soft=c.soft
        )
        return {"loss": loss, "metrics": {"triplets": len(triplets[0])}}

    @staticmethod
    def mine(g: metric.Gathered, c: MetricConfig):
        if c.miner == "none":
            return miners.all_triplets(g.positive, g.negative)
        dist = metric.distances(g.emb, g.emb_all, c.distance)  # (M, M_all), no grad
        if c.miner == "batch_hard":
            return miners.batch_hard_triplets(dist, g.positive, g.negative)
        if c.miner == "hard":
            return miners.hard_triplets(dist, g.positive, g.negative)
        return miners.semi_hard_triplets(dist, g.positive, g.negative, c.margin)
