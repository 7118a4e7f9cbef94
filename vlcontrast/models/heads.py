"""Projection heads and predictors: features (B, F) -> (B, D).

One layer is CLIP's linear projection without a bias (Radford et al. 2021). Two or three layers
make an MLP: Linear -> [BatchNorm] -> ReLU (GELU for DINO) repeated, then a last Linear and
``out_norm`` (SimCLR v2's output batch norm, or SimSiam's and MoCo v3's without affine). A
one-layer head stays a plain ``nn.Linear`` so its weights keep the name ``proj.weight`` that
checkpoints have always used. The image-only methods build their heads from
``objective_settings.HeadConfig`` (:func:`build_head`); the dual encoder's projection is
``model.proj_layers``.
"""

from __future__ import annotations

from torch import nn


def mlp(
    in_dim: int,
    out_dim: int,
    layers: int = 1,
    hidden: int = 0,
    bn: bool = False,
    out_norm: str = "none",
    act: str = "relu",
):
    """``layers`` linear layers from ``in_dim`` to ``out_dim``; ``hidden`` 0 means ``in_dim``."""
    if layers < 1:
        raise ValueError(f"a head needs at least one layer, got {layers}")
    if layers == 1:
        return nn.Linear(in_dim, out_dim, bias=False)
    width = hidden or in_dim
    blocks: list[nn.Module] = []
    for i in range(layers - 1):
        blocks.append(nn.Linear(in_dim if i == 0 else width, width, bias=not bn))
        if bn:
            blocks.append(nn.BatchNorm1d(width))
        blocks.append(nn.GELU() if act == "gelu" else nn.ReLU(inplace=True))
    blocks.append(nn.Linear(width, out_dim, bias=out_norm == "none"))
    if out_norm != "none":
        blocks.append(nn.BatchNorm1d(out_dim, affine=out_norm == "bn"))
    return nn.Sequential(*blocks)


def build_head(cfg, in_dim: int) -> nn.Module:
    """The MLP that a ``HeadConfig`` describes, on inputs of width ``in_dim``; ``dim`` 0 keeps
    the input's width (a predictor maps a projection back to its own space)."""
    act = getattr(cfg, "act", "relu")
    return mlp(in_dim, cfg.dim or in_dim, cfg.layers, cfg.hidden, cfg.bn, cfg.out_norm, act)
