"""Batched embedding of images and texts: the one helper shared by evaluation and search."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from vlcontrast.data.batching import to_device


@torch.no_grad()
def embed_texts(
    model: nn.Module,
    tokenize: Callable[[list[str]], dict[str, torch.Tensor]],
    texts: list[str],
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """(N, D) unit-norm text embeddings, in the order of ``texts``."""
    model.eval()
    chunks = []
    for start in range(0, len(texts), batch_size):
        tokens = to_device(tokenize(texts[start : start + batch_size]), torch.device(device))
        chunks.append(model.encode_text(tokens["input_ids"], tokens["attention_mask"]).float())
    return torch.cat(chunks) if chunks else torch.empty(0)


@torch.no_grad()
def embed_images(
    model: nn.Module, batches: Iterable[dict[str, Any]], device: torch.device | str = "cpu"
) -> dict[str, Any]:
    """Embed every batch's ``images``; returns ``img_emb`` (N, D), labels, texts and keys."""
    model.eval()
    img_emb, labels, texts, keys = [], [], [], []
    for batch in batches:
        img_emb.append(model.encode_image(batch["images"].to(device)).float().cpu())
        if "labels" in batch:
            labels.append(batch["labels"])
        texts.extend(batch.get("texts", []))
        keys.extend(batch.get("keys", []))
    return {
        "img_emb": torch.cat(img_emb),
        "labels": torch.cat(labels) if labels else None,
        "texts": texts,
        "keys": keys,
    }
