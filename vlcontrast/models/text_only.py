"""Text-only encoder (sentence embeddings: text pairs, SimCSE): a transformers text tower, its
pooling and projection, and nothing else.

The inference artifact of the text-pair task (``objectives/text_pairs.py``): ``encode_text``
gives the unit-norm embeddings that ``vlcontrast eval sts`` scores and ``vlcontrast index
build`` stores for text search. Same contract as the other models:
``forward(images=None, input_ids=None, attention_mask=None, feature_map=False)`` -> dict with
``txt_feat`` (pooled features) and ``txt_emb`` (projected, unit-norm); image input is refused
with a message.
"""

from __future__ import annotations

import torch
from torch import nn

from vlcontrast.config import Config
from vlcontrast.models.text_tower import TextTower


class TextEncoder(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.text = TextTower(cfg.text, cfg.model.embed_dim)
        self.embed_dim = cfg.model.embed_dim

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.text(input_ids, attention_mask)[1]

    def forward(
        self,
        images: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        feature_map: bool = False,
    ) -> dict[str, torch.Tensor]:
        if images is not None:
            raise ValueError("a text-only model (model.kind=text) has no image tower")
        if input_ids is None:
            return {}
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        txt_feat, txt_emb = self.text(input_ids, attention_mask)
        return {"txt_feat": txt_feat, "txt_emb": txt_emb}
