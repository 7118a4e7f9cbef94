"""Layer-wise learning-rate decay for fine-tuning (``optim.layer_decay``): the lr of a
parameter in transformer block ``i`` of a tower with ``L`` blocks is scaled by
``decay ** (L - i)``, its embeddings by ``decay ** (L + 1)``, and everything above the blocks
(final norm, projection, logit scale, a method's heads) keeps the full lr. Pretrained lower
layers hold general features and move least (BEiT, Bao et al. 2022, section 2.5, and MAE's
fine-tuning recipe; timm's ``param_groups_layer_decay`` is the same rule).

Each tower is counted on its own (a 12-block image tower and a 12-block text tower both run from
embeddings at ``decay ** 13`` to their last block at ``decay``). Blocks are found by name: timm's
``blocks.N`` and ``stages.N``, transformers' ``layer.N`` / ``layers.N``, OpenAI's
``resblocks.N``; embeddings by ``embed``, ``cls_token``, ``pos_embed``, ``reg_token`` and
``norm_pre`` (CLIP's ``ln_pre``).
"""

from __future__ import annotations

import re

from torch import nn

BLOCK = re.compile(r"\.(?:blocks|stages|layers?|resblocks)\.(\d+)\.")
EMBEDDING = ("embed", "cls_token", "pos_embed", "reg_token", "norm_pre")
TOWERS = ("image.", "text.")


def tower_of(name: str) -> str | None:
    """The tower a parameter name belongs to (``...image.``/``...text.``), or None."""
    for tower in TOWERS:
        at = name.find(tower)
        if at == 0 or (at > 0 and name[at - 1] == "."):
            return name[: at + len(tower)]
    return None


def lr_scales(model: nn.Module, decay: float) -> dict[str, float]:
    """``{parameter name: lr multiplier}`` for every trainable parameter of ``model``."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    depth: dict[str, int] = {}
    for name in names:
        tower, block = tower_of(name), BLOCK.search(name)
        if tower and block:
            depth[tower] = max(depth.get(tower, 0), int(block.group(1)) + 1)
    scales = {}
    for name in names:
        tower = tower_of(name)
        if tower not in depth or decay == 1.0:
            scales[name] = 1.0
            continue
        block = BLOCK.search(name)
        if block:
            layer = int(block.group(1)) + 1
        elif any(key in name[len(tower) :] for key in EMBEDDING):
            layer = 0
        else:
            layer = depth[tower] + 1
        scales[name] = decay ** (depth[tower] + 1 - layer)
    return scales
