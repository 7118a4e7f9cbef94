"""Shared by the data tests: tiny shards and a loader built the way the trainer builds it."""

from __future__ import annotations

import io
import itertools

from PIL import Image

from vlcontrast.data.bad_data import BadData
from vlcontrast.data.batching import Collate, iterate_epochs, make_loader, ordered_batches
from vlcontrast.data.decode import Decoder
from vlcontrast.data.image import CropResize
from vlcontrast.data.shards import DataPosition, ShardDataset
from vlcontrast.data.sources import parse_sources


def jpeg(color=(200, 30, 30), size=(20, 12)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="JPEG")
    return buffer.getvalue()


def good(i: int) -> dict:
    return {"__key__": f"k{i:04d}", "jpg": jpeg(), "txt": f"sample {i}"}


def dataset(pattern, tokenizer, batch=4, weights=(), caption_key="txt", **kwargs) -> ShardDataset:
    decoder = Decoder(CropResize(8, "random_resized"), caption_key=caption_key)
    collate = Collate(tokenizer, 8)
    return ShardDataset(parse_sources(pattern, weights), decoder, collate, batch, **kwargs)


def batches(ds: ShardDataset, workers: int, position: DataPosition, steps: int, bad=None):
    """``steps`` batches from ``position`` (updated in place), as the trainer gets them."""
    if not position.streams:
        position.reset(max(1, workers))
    account = (bad or BadData()).add
    stream = iterate_epochs(make_loader(ds, workers), ds, position, account)
    return list(itertools.islice(stream, steps))


def run(ds: ShardDataset, workers: int, position: DataPosition, steps: int, bad=None) -> list:
    """The keys of each of ``steps`` batches."""
    return [batch["keys"] for batch in batches(ds, workers, position, steps, bad)]


def one_epoch(ds: ShardDataset, workers: int, streams: int, bad: BadData) -> list[str]:
    """The keys of a whole epoch, with every count (end markers included) in ``bad``."""
    position = DataPosition()
    position.reset(streams)
    ds.position = position
    loader = make_loader(ds, workers)
    return [k for batch in ordered_batches(loader, position, bad.add) for k in batch["keys"]]


def saved(position: DataPosition) -> DataPosition:
    """The position as a checkpoint stores and reloads it."""
    return DataPosition.from_dict(position.to_dict())
