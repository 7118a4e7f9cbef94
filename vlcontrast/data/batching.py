"""Samples -> batches: stack images, tokenise captions in one call, carry bookkeeping.

Tokenisation happens per batch (one fast-tokenizer call, in the dataloader worker). Each batch
also carries the worker that made it (for exact resume) and that worker's skipped-sample counts
since its previous batch (for bad-data accounting in the trainer's process).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from vlcontrast.data.shards import DataPosition, ShardDataset, drain_errors


@dataclass
class Collate:
    tokenizer: PreTrainedTokenizerBase
    context_length: int
    dataset: ShardDataset | None = None

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        tokens = self.tokenizer(
            texts,
            padding="longest",
            truncation=True,
            max_length=self.context_length,
            return_tensors="pt",
        )
        return {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        batch: dict[str, Any] = {"images": torch.stack([s["image"] for s in samples])}
        batch.update(self.tokenize([s["text"] for s in samples]))
        batch["texts"] = [s["text"] for s in samples]
        batch["keys"] = [s["key"] for s in samples]
        batch["worker"] = samples[0]["worker"]
        batch["skipped"] = drain_errors(self.dataset) if self.dataset is not None else {}
        return batch


def make_loader(
    dataset: ShardDataset, collate: Collate, batch_size: int, num_workers: int, drop_last: bool
) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate,
        drop_last=drop_last,
        persistent_workers=False,
        prefetch_factor=4 if num_workers else None,
        # Its own generator: creating an iterator must not draw from the global RNG, or a resumed
        # run's dropout masks would shift by one draw (samples are seeded per index anyway).
        generator=torch.Generator().manual_seed(0),
    )


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {
        k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()
    }


def iterate_epochs(
    loader: DataLoader, dataset: ShardDataset, position: DataPosition
) -> Iterator[dict[str, Any]]:
    """Endless batch stream from a resumable ``position``, which is updated in place after every
    batch so that it is always the position to save."""
    workers = max(1, loader.num_workers)
    if len(position.consumed) != workers:
        if any(position.consumed):
            raise ValueError(
                f"data.num_workers: the checkpoint was written with {len(position.consumed)} "
                f"worker(s); resume with data.num_workers={len(position.consumed)}"
            )
        position.consumed = [0] * workers
    while True:
        dataset.position = position
        produced = any(position.consumed)  # resuming exactly at an epoch's end yields nothing
        for batch in loader:
            produced = True
            position.consumed[batch["worker"]] += len(batch["texts"])
            position.next_worker = (batch["worker"] + 1) % workers
            yield batch
        if not produced:
            raise RuntimeError(
                f"epoch {position.epoch} yielded no batch: fewer valid samples than "
                f"data.batch_size per worker in {len(dataset.urls)} shard(s); check "
                f"data.train_shards and the skipped-sample counts"
            )
        position.epoch += 1
        position.consumed = [0] * workers
        position.next_worker = 0
