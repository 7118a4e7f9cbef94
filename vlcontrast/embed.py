"""Batched embedding of images and texts: the one helper shared by evaluation and search.

Layered on the models only (``models/`` plus the data collections), never on ``train/`` or
``eval/``. :func:`iter_embeddings` is the streaming form: it yields this rank's batches of keys
and embeddings as they are computed (and can write them to disk, one file per batch), so a
collection of any size is embedded in bounded memory. :func:`embed_images` is the gathered form
for evaluation: each rank embeds its share and the results are gathered in the order of the
whole set (``order`` keys for images, contiguous slices for texts), so every rank ends with
exactly what one process would have computed; every rank must call it together.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from vlcontrast import distributed
from vlcontrast.config import Config
from vlcontrast.data.batching import Collate
from vlcontrast.data.collection import EvalDataset, eval_collate
from vlcontrast.data.image import MAX_PIXELS, CropResize

Tokenize = Callable[[list[str]], dict[str, torch.Tensor]]


@torch.no_grad()
def embed_texts(
    model: nn.Module,
    tokenize: Tokenize,
    texts: list[str],
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    shard: bool = False,
) -> torch.Tensor:
    """(N, D) unit-norm text embeddings on the CPU, in the order of ``texts``.

    ``shard=True``: each rank embeds a contiguous slice and the slices are gathered (all ranks
    must call it with the same ``texts``).
    """
    model.eval()
    device = torch.device(device)
    start, stop = _slice(len(texts)) if shard else (0, len(texts))
    chunks = [torch.empty(0, model.embed_dim, device=device)]
    for first in range(start, stop, batch_size):
        tokens = tokenize(texts[first : min(first + batch_size, stop)])
        ids, mask = tokens["input_ids"].to(device), tokens["attention_mask"].to(device)
        chunks.append(model.encode_text(ids, mask).float())
    txt_emb = torch.cat(chunks)  # (n, D)
    if shard:
        txt_emb = distributed.all_gather_no_grad(txt_emb)  # (N, D)
    return txt_emb.cpu()


def _slice(n: int) -> tuple[int, int]:
    rank, world = distributed.rank(), distributed.world_size()
    return n * rank // world, n * (rank + 1) // world


@torch.no_grad()
def iter_embeddings(
    model: nn.Module,
    dataset: EvalDataset,
    batch_size: int = 256,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
    progress: Callable | None = None,
) -> Iterator[dict[str, Any]]:
    """This rank's share of ``dataset``, embedded batch by batch.

    Yields ``{"keys", "order" (N,), "img_emb" (N, D) float32 on the CPU, "labels" (N,) or None,
    "captions" or None, "skipped" {reason: n}}`` per batch, in this rank's reading order.
    """
    model.eval()
    device = torch.device(device)
    loader = DataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=eval_collate
    )
    for batch in progress(loader) if progress else loader:
        out = {
            "keys": batch["keys"],
            "order": batch["order"],
            "img_emb": torch.empty(0, model.embed_dim),
            "labels": batch.get("labels"),
            "captions": batch.get("captions"),
            "skipped": dict(batch["skipped"]),
        }
        if batch["images"] is not None:
            out["img_emb"] = encode_images(model, batch["images"], device)
        yield out


def encode_images(model: nn.Module, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch of images (uint8 (B, 3, S, S), normalised on the device) -> the model's
    unit-norm embeddings (B, D), float32 on the CPU: the one encoding step of evaluation
    (:func:`iter_embeddings`) and search (``search/build.py``)."""
    return model.encode_image(images.to(device)).float().cpu()


@torch.no_grad()
def embed_images(
    model: nn.Module,
    dataset: EvalDataset,
    batch_size: int = 256,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
    max_samples: int = 0,
    progress: Callable | None = None,
    gather: bool = True,
) -> dict[str, Any]:
    """Embed every image of ``dataset`` (this rank's share), then gather across ranks.

    Returns ``img_emb`` (N, D) on the CPU in dataset order, ``labels`` (N,) or None,
    ``captions`` (list of caption lists) or None, ``keys`` and ``skipped`` counts by reason.
    Without ``gather`` (and without ``max_samples``), this rank's share only, in the order it
    was read, with every rank's skip counts summed and each row's index in the dataset
    (``order``): a kNN bank or a probe's training set that stays split over the ranks.
    """
    order, img_emb, labels, captions, keys = [], [], [], [], []
    skipped: Counter = Counter()
    for batch in iter_embeddings(model, dataset, batch_size, num_workers, device, progress):
        skipped.update(batch["skipped"])
        if not batch["keys"]:
            continue
        img_emb.append(batch["img_emb"].cpu())
        order.append(batch["order"])
        labels.extend(batch["labels"].tolist() if batch["labels"] is not None else [])
        captions.extend(batch["captions"] or [])
        keys.extend(batch["keys"])
    local = {
        "order": torch.cat(order).tolist() if order else [],
        "labels": labels,
        "captions": captions,
        "keys": keys,
        "skipped": dict(skipped),
    }
    img_emb = torch.cat(img_emb) if img_emb else torch.empty(0, model.embed_dim)
    if not gather:
        skipped = Counter()
        for part in distributed.all_gather_objects(local["skipped"]):
            skipped.update(part)
        return {
            "img_emb": img_emb,
            "labels": torch.tensor(labels, dtype=torch.long) if dataset.need_label else None,
            "captions": captions if dataset.need_captions else None,
            "keys": keys,
            "order": local["order"],
            "skipped": dict(skipped),
        }
    # (N, D) in rank order, on the CPU; through the device 1024 rows at a time (NCCL gathers
    # only GPU tensors), so the whole set (1.28M x 2048 floats: 10 GB) never sits on the GPU
    sizes = distributed.all_gather_objects(len(img_emb))
    img_emb = distributed.all_gather_rows(img_emb.float(), sizes, device)
    merged = _gather_objects(local)
    sort = sorted(range(len(merged["order"])), key=merged["order"].__getitem__)
    if max_samples:
        sort = sort[:max_samples]
    pick = torch.tensor(sort, dtype=torch.long)
    return {
        "img_emb": img_emb[pick] if sort else img_emb[:0],
        "labels": torch.tensor([merged["labels"][i] for i in sort]) if merged["labels"] else None,
        "captions": [merged["captions"][i] for i in sort] if merged["captions"] else None,
        "keys": [merged["keys"][i] for i in sort],
        "skipped": merged["skipped"],
    }


def _gather_objects(local: dict[str, Any]) -> dict[str, Any]:
    """Concatenate every rank's lists (rank order, like the tensor gather) and sum the counts."""
    if distributed.world_size() == 1:
        return local
    parts: list[Any] = [None] * distributed.world_size()
    dist.all_gather_object(parts, local)
    merged: dict[str, Any] = {k: [] for k in ("order", "labels", "captions", "keys")}
    skipped: Counter = Counter()
    for part in parts:
        for name in merged:
            merged[name].extend(part[name])
        skipped.update(part["skipped"])
    merged["skipped"] = dict(skipped)
    return merged


def eval_transform(cfg: Config) -> CropResize:
    """The training pipeline's own centre crop (uint8; the model normalises on the device), so
    a file is the same tensor in training and evaluation; or, for an imported CLIP
    (``image.eval_resize=shortest``), the release's own resize-then-crop; ``image.eval_crop``
    of the centred square either way."""
    shortest = cfg.image.eval_resize == "shortest"
    return CropResize(
        cfg.image.image_size,
        "center",
        draft=cfg.data.draft,
        shortest_side=shortest,
        fraction=cfg.image.eval_crop,
    )


@dataclass
class Embedder:
    """What every evaluator needs to embed data: the model, its tokenizer and preprocessing, and
    how to batch. Built once per evaluation round (``from_model``)."""

    model: nn.Module
    tokenize: Tokenize
    transform: Callable
    batch_size: int = 256
    num_workers: int = 0
    device: torch.device | str = "cpu"
    progress: bool = False
    max_pixels: int = MAX_PIXELS
    tokenizer: Any = None  # for vocabulary checks (zero-shot prompts)

    @classmethod
    def from_model(cls, model: nn.Module, tokenizer, cfg: Config, device="cpu", progress=False):
        transform = eval_transform(cfg)
        tokenize = Collate(tokenizer, cfg.text.context_length).tokenize if tokenizer else None
        return cls(
            model,
            tokenize,
            transform,
            cfg.eval.batch_size,
            cfg.eval.num_workers,
            device,
            progress,
            cfg.data.max_pixels,
            tokenizer,
        )

    def images(
        self,
        source,
        need_label=False,
        need_captions=False,
        max_samples=0,
        desc="embed",
        gather=True,
    ) -> dict[str, Any]:
        """:func:`embed_images` of ``source`` (``gather``: every rank ends with the whole set;
        else its own share)."""
        if max_samples:
            source.limit(max_samples)  # read only what the first max_samples need
        dataset = EvalDataset(source, self.transform, need_label, need_captions, self.max_pixels)
        show = self.progress and distributed.is_main()
        bar = (lambda it: tqdm(it, desc=desc, unit="batch", leave=False)) if show else None
        return embed_images(
            self.model,
            dataset,
            self.batch_size,
            self.num_workers,
            self.device,
            max_samples,
            bar,
            gather,
        )

    def texts(self, texts: list[str]) -> torch.Tensor:
        return embed_texts(
            self.model, self.tokenize, texts, self.batch_size, self.device, shard=True
        )
