"""Projection heads and predictors: tower features (B, F) -> (B, D).

One layer is CLIP's linear projection without a bias (Radford et al. 2021). Two or three layers
make the MLP heads of the image-only methods: Linear -> [BatchNorm] -> ReLU repeated, then a
last Linear (SimCLR, Chen et al. 2020: 2 layers, hidden width = the feature width; SimCLR v2 and
MoCo v3: 3 layers with batch norm). A one-layer head stays a plain ``nn.Linear`` so its weights
keep the name ``proj.weight`` that checkpoints have always used.
"""

from __future__ import annotations

from torch import nn


def mlp(in_dim: int, out_dim: int, layers: int = 1, hidden: int = 0, bn: bool = False):
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
        blocks.append(nn.ReLU(inplace=True))
    blocks.append(nn.Linear(width, out_dim))
    return nn.Sequential(*blocks)
