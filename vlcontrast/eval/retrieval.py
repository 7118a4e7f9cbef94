"""Image<->text retrieval: recall@1/5/10 and median rank on captioned data.

Each image may have several captions (COCO and Flickr30k have five): all captions are embedded
and ``txt_image`` records which image each belongs to. Ranking is blockwise
(``metrics.retrieval_metrics``), so memory stays O(N x D).
"""

from __future__ import annotations

from typing import Any

import torch

from vlcontrast.data.collection import open_source
from vlcontrast.embed import Embedder
from vlcontrast.eval.metrics import retrieval_metrics


def evaluate_retrieval(embedder: Embedder, spec) -> dict[str, Any]:
    source = open_source(spec, spec.data, spec.split)
    embedded = embedder.images(source, need_captions=True, max_samples=spec.max_samples)
    if not embedded["captions"]:
        raise ValueError(f"{spec.data}: no captioned image could be read ({embedded['skipped']})")
    texts = [text for captions in embedded["captions"] for text in captions]
    txt_image = torch.tensor(
        [i for i, captions in enumerate(embedded["captions"]) for _ in captions]
    )  # (T,)
    txt_emb = embedder.texts(texts)  # (T, D)
    return {
        "metrics": retrieval_metrics(embedded["img_emb"], txt_emb, txt_image),
        "skipped": embedded["skipped"],
    }
