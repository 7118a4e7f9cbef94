"""Samples -> batches -> the trainer's batch stream, in a fixed order with a resumable position.

Tokenisation happens per batch in the dataloader worker (one fast-tokenizer call for the whole
batch). ``iterate_epochs`` puts the streams' batches in round-robin stream order whatever the
worker count (see ``shards``), updates the :class:`DataPosition` after every batch, so that it is
always the position to save, and moves on to the next epoch when every stream has ended.
"""

from __future__ import annotations

import copy
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, get_worker_info
from transformers import PreTrainedTokenizerBase

from vlcontrast.data.shards import DataError, DataPosition, ShardDataset
from vlcontrast.data.streams import Cursor


@dataclass
class Collate:
    """Samples -> a batch: ``images`` stacked, and for captioned samples ``input_ids`` and
    ``attention_mask`` (one fast-tokenizer call) and ``texts``. No tokenizer: image-only."""

    tokenizer: PreTrainedTokenizerBase | None = None
    context_length: int = 77

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
        batch: dict[str, Any] = {}
        images = [s["image"] for s in samples if "image" in s]
        if images and isinstance(images[0], dict):  # view groups: (B, count, 3, S, S) each
            batch["views"] = {k: stack([i[k] for i in images]) for k in images[0]}
        elif images:
            batch["images"] = stack(images)
        if self.tokenizer is not None:
            texts = [s["text"] for s in samples]
            batch.update(self.tokenize(texts))
            batch["texts"] = texts
            batch.update(self.pairs(samples))
        if "label" in samples[0]:
            batch["labels"] = torch.tensor([s["label"] for s in samples], dtype=torch.long)
        batch["keys"] = [s["key"] for s in samples]
        return batch

    def pairs(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        """A text-pair batch's positives (``pos_*``, (B, L)) and hard negatives (``neg_*``,
        (B, H, L)), when the samples have them."""
        out: dict[str, Any] = {}
        if "positive" in samples[0]:
            tokens = self.tokenize([s["positive"] for s in samples])
            out.update({f"pos_{k}": v for k, v in tokens.items()})
        if "negatives" in samples[0]:
            b, h = len(samples), len(samples[0]["negatives"])
            tokens = self.tokenize([n for s in samples for n in s["negatives"]])
            out.update({f"neg_{k}": v.reshape(b, h, -1) for k, v in tokens.items()})  # (B, H, L)
        return out


def stack(images: list[torch.Tensor]) -> torch.Tensor:
    """``torch.stack``; in a dataloader worker, straight into shared memory (as the DataLoader's
    default collate does), so that sending the batch does not copy it into a new segment."""
    if get_worker_info() is None:
        return torch.stack(images)
    first = images[0]
    out = torch.empty((len(images), *first.shape), dtype=first.dtype).share_memory_()
    return torch.stack(images, out=out)


def make_loader(dataset: ShardDataset, num_workers: int) -> DataLoader:
    """Workers yield whole batches (``batch_size=None``)."""
    return DataLoader(
        dataset,
        batch_size=None,
        num_workers=num_workers,
        persistent_workers=False,
        prefetch_factor=4 if num_workers else None,
        # page-locked batches: the copy to the GPU overlaps compute (to_device's non_blocking)
        pin_memory=torch.cuda.is_available(),
        # Its own generator: creating an iterator must not draw from the global RNG, or a resumed
        # run's dropout masks would shift by one draw (samples are seeded per position anyway).
        generator=torch.Generator().manual_seed(0),
    )


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Every tensor of the batch on ``device``, those of a dict (view groups) included."""

    def move(value: Any) -> Any:
        if torch.is_tensor(value):
            return value.to(device, non_blocking=True)
        if isinstance(value, dict):
            return {k: move(v) for k, v in value.items()}
        return value

    return {k: move(v) for k, v in batch.items()}


def ordered_batches(
    loader: DataLoader, position: DataPosition, account: Callable[[dict], Any]
) -> Iterator[dict[str, Any]]:
    """One epoch of batches in stream order from ``position``. ``account`` sees every batch and
    end marker as it comes due (skip counts and samples read, for :class:`BadData`)."""
    pending: dict[int, deque] = {s: deque() for s in range(position.streams)}

    def ready() -> Iterator[dict[str, Any]]:
        while not all(cursor.done for cursor in position.cursors):
            stream = position.next_stream
            if position.cursors[stream].done:
                position.next_stream = (stream + 1) % position.streams
                continue
            if not pending[stream]:
                return
            item = pending[stream].popleft()
            position.next_stream = (stream + 1) % position.streams
            account(item)
            if item.get("end"):
                position.cursors[stream].done = True
                continue
            position.cursors[stream] = Cursor(**item["cursor"])
            yield item["batch"]

    for item in loader:
        if item.get("pad") and not item.get("end"):
            continue
        pending[item["stream"]].append(item)
        yield from ready()


def iterate_epochs(
    loader: DataLoader,
    dataset: ShardDataset,
    position: DataPosition,
    account: Callable[[dict], Any] = lambda item: None,
) -> Iterator[dict[str, Any]]:
    """Endless batch stream from a resumable ``position`` (updated in place after every batch,
    so it is always the position to save)."""
    seen: Counter = Counter()  # this epoch's skipped samples, for the error below

    def count(item: dict) -> None:
        for reason, _, n in item.get("skipped", ()):  # one row per (reason, shard)
            seen[reason] += n
        account(item)

    while True:
        fresh = not any(c.window or c.taken or c.done for c in position.cursors)
        dataset.position = copy.deepcopy(position)  # what the workers start from
        seen.clear()
        produced = False
        for batch in ordered_batches(loader, position, count):
            produced = True
            yield batch
        if fresh and not produced:
            raise DataError(
                f"epoch {position.epoch} yielded no batch: fewer valid samples than "
                f"data.batch_size in every stream of {len(dataset.urls)} shard(s); check "
                f"data.train_shards (skipped samples: {dict(seen) or 'none'})"
            )
        position.epoch += 1
        position.reset(position.streams)
