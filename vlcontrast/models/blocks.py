"""Where a tower keeps its transformer blocks: timm's ``blocks`` (ViTs), transformers' ``layers``
(CLIP's text model) or ``layer`` (BERT). Locking unlocks the last of them; FSDP shards each."""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn

BLOCK_LISTS = ("blocks", "layers", "layer")


def block_lists(module: nn.Module) -> Iterator[nn.Module]:
    """Every block list under ``module``, outermost first."""
    for name, child in module.named_modules():
        if name.rsplit(".", 1)[-1] in BLOCK_LISTS and isinstance(
            child, nn.ModuleList | nn.Sequential
        ):
            yield child
