"""Sentence embeddings (objective ``text_pairs``, ``model.kind=text``): the text tower trained on
(anchor, positive[, hard negatives]) pairs with in-batch negatives gathered across ranks
(sentence-transformers' most used loss), or on single sentences with unsupervised SimCSE.

The batch holds the anchors (``input_ids``, from ``data.caption_key``), and in ``pairs`` mode
the positives (``pos_input_ids``, ``objective.text_pairs.positive_key``) and H hard negatives
per anchor (``neg_input_ids`` (B, H, L), ``negatives_key``). In ``simcse`` mode the anchors go
through the tower twice: dropout makes the two passes differ, and the second pass is the
positive (Gao et al. 2021: dropout is the minimal augmentation; the text tower's own dropout,
0.1 in BERT, is theirs). The loss is ``losses/pairs.py``.
"""

from __future__ import annotations

from typing import Any

import torch

from vlcontrast.losses.pairs import in_batch_negatives_loss
from vlcontrast.objective_settings import TextPairsConfig
from vlcontrast.objectives.base import Objective, full


class TextPairsObjective(Objective):
    modalities = ("text",)

    def __init__(self, cfg: TextPairsConfig | None = None):
        super().__init__()
        self.cfg = cfg if cfg is not None else TextPairsConfig()
        self.cfg.check()

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask)["txt_emb"]

    def outputs(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        ids, mask = batch["input_ids"], batch["attention_mask"]
        out = {"anchor": self.encode(ids, mask)}
        if self.cfg.mode == "simcse":
            out["positive"] = self.encode(ids, mask)  # another dropout mask
        else:
            out["positive"] = self.encode(batch["pos_input_ids"], batch["pos_attention_mask"])
        if self.cfg.negatives:
            neg_ids = batch["neg_input_ids"]  # (B, H, L)
            b, h, length = neg_ids.shape
            flat = self.encode(
                neg_ids.reshape(b * h, length), batch["neg_attention_mask"].reshape(b * h, length)
            )
            out["negative"] = flat.reshape(b, h, -1)  # (B, H, D)
        return out

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, Any]:
        c = self.cfg
        negative = outputs.get("negative")
        loss = in_batch_negatives_loss(
            full(outputs["anchor"]),
            full(outputs["positive"]),
            None if negative is None else full(negative),
            c.temperature,
            c.symmetric,
            c.tiled_from,
        )
        with torch.no_grad():  # how often the positive is the anchor's nearest (this rank)
            sim = outputs["anchor"].float() @ outputs["positive"].float().T
            top1 = (sim.argmax(1) == torch.arange(len(sim), device=sim.device)).float().mean()
        return {"loss": loss, "metrics": {"pair_top1": top1}}
