"""The image-only methods' common half: a projector (and a predictor) on the backbone's pooled
features, built from the method's own settings (``objective.<name>.projector``/``predictor``,
``objective_settings.HeadConfig``) once the model is known, and owned by the task.

``embed(images)`` runs backbone -> projector -> predictor on one view and returns ``proj``
(before normalisation: Barlow Twins standardises it), ``emb`` (unit-norm projection) and, with
a predictor, ``pred`` (unit-norm prediction). Methods whose reference code forwards each view
separately (MoCo, BYOL, SimSiam, Barlow Twins) call it once per view, so batch norm normalises
over one view's images as theirs does; SimCLR and SupCon forward both views together, as their
code does (``two_views``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlcontrast.models.heads import build_head
from vlcontrast.objectives.base import Objective


def feature_width(model: nn.Module) -> int:
    """The width of the pooled image features the heads read."""
    return int(model.image.num_features)


class ImageTask(Objective):
    """An image-only objective with ``self.cfg.projector`` (and ``predictor``) heads."""

    modalities = ("image",)
    views = 2

    def setup(self, model: nn.Module, cfg: Any, global_batch: int) -> None:
        super().setup(model, cfg, global_batch)
        dtype = next(model.parameters()).dtype
        self.projector = build_head(self.cfg.projector, feature_width(model)).to(dtype)
        self.proj_dim = self.cfg.projector.dim or feature_width(model)
        predictor = getattr(self.cfg, "predictor", None)
        if predictor is not None:
            self.predictor = build_head(predictor, self.proj_dim).to(dtype)

    def embed(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """One view through backbone, projector and (if any) predictor."""
        proj = self.projector(self.model(images=images)["img_feat"])  # (B, D)
        out = {"proj": proj, "emb": F.normalize(proj, dim=-1)}
        if hasattr(self, "predictor"):
            out["pred"] = F.normalize(self.predictor(proj), dim=-1)
        return out
