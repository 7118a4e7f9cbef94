"""Stream image-caption samples from WebDataset tar shards (img2dataset layout).

shard URLs -> this rank's and worker's shards -> tar members grouped by key -> shuffle buffer ->
[skip what a resumed run has already seen] -> decode + transform -> samples.

* URLs are brace-expanded (``shards/{00000..00099}.tar``; several patterns joined by ``::``) and
  opened with ``webdataset.gopen``, so local paths, ``pipe:`` commands and fsspec URLs all work.
* Epoch mode: shards are shuffled per epoch from the seed, then dealt to (rank, worker) streams.
* Bad data never crashes a worker: each failure is skipped and counted by reason; the counts
  travel to the trainer inside the next batch (``collate``).
* Resume: the trainer counts the samples each worker delivered (batches carry their worker id)
  and which worker is due next. A resumed worker skips its count of raw samples before decoding,
  and worker ids are rotated so the DataLoader's round-robin continues with the worker that was
  due. Transform randomness is seeded per sample, so skipped samples cost no decode and the next
  samples are augmented exactly as in the uninterrupted run.
"""

from __future__ import annotations

import io
import random
import tarfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from vlcontrast import distributed


def expand_urls(pattern: str) -> list[str]:
    urls: list[str] = []
    for part in pattern.split("::"):
        if part.strip():
            urls.extend(wds.shardlists.expand_urls(part.strip()))
    return urls


class _TailReader:
    """A file wrapper that remembers the last block read. Python's tarfile ends iteration
    silently on a header cut short; a complete tar ends with zero blocks, so a non-zero last
    block after a "normal" end means the shard was truncated."""

    def __init__(self, raw):
        self.raw, self.tail = raw, b""

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        if data:
            self.tail = (self.tail + data)[-512:]
        return data

    def truncated(self) -> bool:
        while self.read(1 << 16):
            pass
        return bool(self.tail.strip(b"\0"))


def iter_samples(url: str, errors: Counter) -> Iterator[dict[str, Any]]:
    """Raw samples of the tar at ``url``: consecutive members sharing a key (``000001.jpg`` +
    ``000001.txt``) form one sample. A truncated or unreadable shard is counted; the sample it
    cut short is dropped, not passed on as a sample with missing fields."""
    try:
        stream = wds.gopen(url, "rb")
    except Exception:  # noqa: BLE001 - any opener failure is a bad shard, not a crash
        errors["unreadable_shard"] += 1
        return
    plain = url.endswith(".tar")  # compressed streams end with their own trailer, not zeros
    reader = _TailReader(stream)
    current: dict[str, Any] | None = None
    try:
        with tarfile.open(fileobj=reader, mode="r|" if plain else "r|*") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                key, ext = wds.tariterators.base_plus_ext(info.name)
                if key is None:
                    continue
                data = tar.extractfile(info).read()
                if current is not None and current["__key__"] != key:
                    yield current
                    current = None
                if current is None:
                    current = {"__key__": key, "__url__": url}
                current[ext.lower()] = data
        if plain and reader.truncated():
            raise EOFError("tar ends inside a header")
    except (tarfile.TarError, OSError, EOFError):
        errors["truncated_shard"] += 1
        return
    finally:
        stream.close()
    if current is not None:
        yield current


def shuffled(items: Iterator, size: int, rng: random.Random) -> Iterator:
    """Shuffle with a buffer of ``size`` items (1 = no shuffling)."""
    buffer: list = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        index = rng.randrange(size)
        buffer[index], item = item, buffer[index]
        yield item
    rng.shuffle(buffer)
    yield from buffer


class SkipSample(Exception):
    """Raised by a decoder for a sample to skip; ``reason`` is the counter key."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class Decoder:
    """Raw sample -> {"image": tensor, "text": str, "key": str}."""

    transform: Callable[[Image.Image], torch.Tensor]
    image_keys: tuple[str, ...] = ("jpg", "jpeg", "png", "webp")
    caption_key: str = "txt"

    def __call__(self, raw: dict[str, Any]) -> dict[str, Any]:
        image_key = next((k for k in self.image_keys if k in raw), None)
        if image_key is None:
            raise SkipSample("missing_image")
        if self.caption_key not in raw:
            raise SkipSample("missing_caption")
        try:
            text = raw[self.caption_key].decode("utf-8").strip()
        except UnicodeDecodeError:
            raise SkipSample("bad_caption_encoding") from None
        if not text:
            raise SkipSample("empty_caption")
        try:
            with Image.open(io.BytesIO(raw[image_key])) as img:
                img.load()
                image = img.convert("RGB")
        except Exception:  # noqa: BLE001 - PIL raises many types for corrupt files
            raise SkipSample("corrupt_image") from None
        try:
            sample = {"image": self.transform(image), "text": text, "key": raw["__key__"]}
        except Exception:  # noqa: BLE001
            raise SkipSample("transform_failed") from None
        return sample


@dataclass
class DataPosition:
    """Where a run stands in its data: ``consumed[w]`` samples delivered by worker ``w`` in
    ``epoch``, and the worker whose batch comes next."""

    epoch: int = 0
    consumed: list[int] = field(default_factory=list)
    next_worker: int = 0


@dataclass
class ShardDataset(IterableDataset):
    """Samples from ``urls`` for this rank and dataloader worker, one epoch per iteration.

    Set ``position`` before creating a DataLoader iterator: workers pick it up when spawned.
    """

    urls: list[str]
    decode: Decoder
    seed: int = 0
    shuffle_buffer: int = 1
    shuffle_shards: bool = True
    position: DataPosition = field(default_factory=DataPosition)
    errors: Counter = field(default_factory=Counter)

    def _streams(self) -> tuple[int, int, int]:
        info = get_worker_info()
        workers = info.num_workers if info else 1
        worker = ((info.id if info else 0) + self.position.next_worker) % workers
        streams = distributed.world_size() * workers
        if len(self.urls) < streams:
            raise ValueError(
                f"{len(self.urls)} shard(s) for {distributed.world_size()} rank(s) x {workers} "
                f"worker(s): every stream needs a shard; lower data.num_workers or split shards"
            )
        return worker, distributed.rank() * workers + worker, streams

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, stream, streams = self._streams()
        epoch, consumed = self.position.epoch, self.position.consumed
        urls = list(self.urls)
        if self.shuffle_shards:
            random.Random(f"{self.seed}/{epoch}").shuffle(urls)
        mine = urls[stream::streams]
        raw = (s for url in mine for s in iter_samples(url, self.errors))
        rng = random.Random(f"{self.seed}/{epoch}/{stream}")
        skip = consumed[worker] if worker < len(consumed) else 0
        for index, sample in enumerate(shuffled(raw, self.shuffle_buffer, rng)):
            if index < skip:
                continue
            try:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(hash((self.seed, epoch, stream, index)) % 2**63)
                    decoded = self.decode(sample)
            except SkipSample as skipped:
                self.errors[skipped.reason] += 1
                continue
            decoded["worker"] = worker
            yield decoded


def drain_errors(dataset: ShardDataset) -> dict[str, int]:
    """Counts since the last call (in the calling process: a worker or the main process)."""
    counts = dict(dataset.errors)
    dataset.errors.clear()
    return counts
