"""CLIP objective: image-text batch -> symmetric InfoNCE over the global batch.

The blockwise (tiled) kernel is used when ``objective.clip.tiled`` is ``on``, or ``auto`` and the
global batch reaches ``objective.clip.tiled_from``: below that the textbook loss is as fast and
the B x B matrix is small (``benchmarks/loss_memory.py`` measures both).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from vlcontrast.losses.clip import gathered_clip_loss
from vlcontrast.objectives.base import Objective, detached, model_inputs
from vlcontrast.schema import POSITIVE, choices


@dataclass
class CLIPConfig:
    """``objective.clip.*``"""

    # Across ranks: "local" scores this rank's rows against all gathered columns (2·B·N logits
    # per rank), "global" has every rank compute the whole N x N loss. Same gradients.
    gather: str = field(default="local", metadata=choices("local", "global"))
    # Blockwise loss (memory linear in the batch): on, off or auto (global batch >= tiled_from)
    tiled: str = field(default="auto", metadata=choices("auto", "on", "off"))
    # auto tiles from this global batch: below it the textbook loss is as fast on a GPU
    # (benchmarks/loss_memory.py: 1.4x the time on an H100 at 16384 while it fits)
    tiled_from: int = field(default=8192, metadata=POSITIVE)
    tile_size: int = field(default=1024, metadata=POSITIVE)  # tile edge; memory O(tile^2)


class CLIPObjective(Objective):
    def __init__(self, cfg: CLIPConfig | None = None):
        super().__init__()
        self.cfg = cfg if cfg is not None else CLIPConfig()

    def outputs(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        out = model(**model_inputs(batch, self.modalities))
        return {
            "img_emb": out["img_emb"],
            "txt_emb": out["txt_emb"],
            "logit_scale": out["logit_scale"],
        }

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, Any]:
        loss = gathered_clip_loss(
            outputs["img_emb"].float(),
            outputs["txt_emb"].float(),
            outputs["logit_scale"].float(),
            local=self.cfg.gather == "local",
            tiled=self.cfg.tiled == "on",
            tiled_from=self.cfg.tiled_from if self.cfg.tiled == "auto" else None,
            tile_size=self.cfg.tile_size,
        )
        return {"loss": loss, "metrics": {"logit_scale": detached(outputs["logit_scale"])}}

    def after_step(self, model: nn.Module, step: int) -> None:
        self.unwrap(model).clamp_logit_scale()
