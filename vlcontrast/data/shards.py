"""The training dataset: this rank's streams, served by dataloader workers as whole batches.

shards -> ``streams`` (per-stream order and cursor) -> decode -> batches of one stream ->
``batching.ordered_batches`` (the trainer's fixed order across streams).

A rank reads ``position.streams`` logical streams; worker ``w`` of ``W`` serves streams
``w, w + W, ...`` and yields, per round, one item for each of its ``ceil(streams / W)`` slots: the
stream's next batch, or a small marker (padding for a slot without a stream or an ended one; an
end marker once). Every worker thus yields the same number of items per round, so the
DataLoader's round-robin over workers delivers batches in stream order 0, 1, 2, ... with a
bounded reorder in the trainer, for any worker count. Each item carries its control fields
(stream, the stream's cursor after the batch: the data position the trainer saves, samples
read, skip counts) beside the batch (``item["batch"]``), never inside it.

Bad data never crashes a worker: each failed sample is skipped and counted by (reason, shard), and
the counts travel with the stream's next batch or end marker.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from torch.utils.data import IterableDataset, get_worker_info

from vlcontrast import distributed
from vlcontrast.data.decode import Decoder
from vlcontrast.data.image import reuse_image_memory
from vlcontrast.data.skip import DataError, SkipSample
from vlcontrast.data.sources import Source
from vlcontrast.data.streams import Cursor, epoch_shards, resampled_shards, stream_outputs

MISSING = ("missing_image", "missing_caption", "missing_positive", "missing_negatives")
NO_KEYS_AFTER = 200  # this many samples in a row without the configured keys stops the run
# A stream that reads this many samples, or this many shards, without one usable sample stops
# the run (an endless resampled stream over bad shards would otherwise spin without output).
NO_USABLE_SAMPLES = 2000
NO_USABLE_SHARDS = 50

__all__ = ["DataError", "DataPosition", "ShardDataset"]


@dataclass
class DataPosition:
    """Where a run stands in its data: the epoch, each stream's cursor, the stream due next."""

    epoch: int = 0
    streams: int = 0
    cursors: list[Cursor] = field(default_factory=list)
    next_stream: int = 0

    def reset(self, streams: int) -> None:
        self.streams, self.next_stream = streams, 0
        self.cursors = [Cursor() for _ in range(streams)]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def state_dict(self) -> dict[str, Any]:
        return self.to_dict()

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """In place (the trainer and its loader hold this object)."""
        loaded = DataPosition.from_dict(saved)
        self.epoch, self.streams = loaded.epoch, loaded.streams
        self.cursors, self.next_stream = loaded.cursors, loaded.next_stream

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> DataPosition:
        if "cursors" not in saved:  # written before streams existed: restart that epoch
            return cls(epoch=int(saved.get("epoch", 0)))
        cursors = [Cursor(**c) for c in saved["cursors"]]
        return cls(saved["epoch"], saved["streams"], cursors, saved["next_stream"])


@dataclass
class ShardDataset(IterableDataset):
    """Batches of this rank's streams. Set ``position`` before creating a DataLoader iterator:
    workers pick it up when they start."""

    sources: list[Source]
    decode: Decoder
    collate: Callable[[list[dict[str, Any]]], dict[str, Any]]
    batch_size: int
    mode: str = "epoch"  # epoch | resampled
    seed: int = 0
    shuffle_buffer: int = 1
    position: DataPosition = field(default_factory=DataPosition)

    def __post_init__(self):
        # Taken in the process that builds the dataset: a dataloader worker has no process group.
        self.rank, self.world = distributed.rank(), distributed.world_size()

    @property
    def urls(self) -> list[str]:
        return [url for source in self.sources for url in source.urls]

    def check(self, streams: int) -> None:
        """Epoch mode needs a shard for every stream of every rank."""
        if self.mode == "epoch" and len(self.urls) < self.world * streams:
            raise DataError(
                f"data.train_shards: {len(self.urls)} shard(s) for {self.world} "
                f"rank(s) x {streams} stream(s) (data.streams, default data.num_workers); every "
                f"stream needs a shard in epoch mode. Lower data.num_workers/data.streams, write "
                f"smaller shards, or use data.mode=resampled"
            )

    def shard_sequence(self, stream: int):
        global_stream = self.rank * self.position.streams + stream
        if self.mode == "resampled":
            return resampled_shards(self.sources, self.seed, global_stream)
        streams = self.world * self.position.streams
        return epoch_shards(self.urls, self.seed, self.position.epoch, global_stream, streams)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        streams = self.position.streams
        self.check(streams)
        reuse_image_memory()
        live = {
            s: self.stream_batches(s)
            for s in range(worker, streams, workers)
            if not self.position.cursors[s].done
        }
        while live:
            for slot in range(math.ceil(streams / workers)):
                stream = worker + slot * workers
                if stream not in live:
                    yield {"stream": stream, "pad": True}
                    continue
                item = next(live[stream], None)
                if item is None:  # its end marker went out last round
                    del live[stream]
                    item = {"stream": stream, "pad": True}
                yield item

    def stream_batches(self, stream: int) -> Iterator[dict[str, Any]]:
        """Batches of one stream, then its end marker (which carries the last skip counts)."""
        skipped: Counter = Counter()
        seed = f"{self.seed}/{self.position.epoch}/{self.rank}/{stream}"

        def no_samples(shards: int) -> DataError:
            what = f"the last {shards} shards read held no sample that"
            return self.no_usable_error(stream, what, skipped)

        outputs = stream_outputs(
            self.shard_sequence(stream),
            self.position.cursors[stream],
            self.shuffle_buffer,
            seed,
            lambda reason, url: skipped.update([(reason, url)]),
            empty_limit=(NO_USABLE_SHARDS, no_samples),
        )
        samples: list[dict[str, Any]] = []
        seen, read, usable, missing = 0, 0, False, 0
        for raw, rng, after in outputs:
            seen += 1
            read += 1
            try:
                samples.append(self.decode(raw, rng))
                usable = True
            except SkipSample as skip:
                skipped[(skip.reason, raw["__url__"])] += 1
                missing += skip.reason in MISSING
                if not usable and missing == NO_KEYS_AFTER:
                    raise self.no_keys_error(raw, missing) from None
                if not usable and read == NO_USABLE_SAMPLES:
                    what = f"none of the {read} samples read"
                    raise self.no_usable_error(stream, what, skipped) from None
                continue
            if len(samples) == self.batch_size:
                batch = self.collate_checked(samples, skipped)
                if batch is None:
                    continue
                control = {"cursor": asdict(after), "seen": seen, "skipped": drain(skipped)}
                yield {"stream": stream, **control, "batch": batch}
                samples, seen = [], 0
        if not usable and missing:
            raise self.no_keys_error(raw, missing)
        yield {"stream": stream, "pad": True, "end": True, "seen": seen, "skipped": drain(skipped)}

    def collate_checked(self, samples: list, skipped: Counter) -> dict[str, Any] | None:
        """Collate, or drop (and count) the samples the collate function fails on and return
        None so that the batch is refilled."""
        try:
            return self.collate(samples)
        except Exception:  # noqa: BLE001 - e.g. a caption the tokenizer rejects
            keep = []
            for sample in samples:
                try:
                    self.collate([sample])
                    keep.append(sample)
                except Exception:  # noqa: BLE001
                    skipped[("tokenize_failed", sample["url"])] += 1
            samples[:] = keep
            return None

    def no_usable_error(self, stream: int, what: str, skipped: Counter) -> DataError:
        reasons: Counter = Counter()
        for (reason, _), n in skipped.items():
            reasons[reason] += n
        shards = len({url for _, url in skipped})
        return DataError(
            f"{self.mode} stream {stream} of rank {self.rank}: {what} could be used (skipped in "
            f"{shards} shard(s): {dict(reasons) or 'none'}); check data.train_shards"
        )

    def no_keys_error(self, raw: dict[str, Any], missing: int) -> DataError:
        seen = sorted(k for k in raw if not k.startswith("__"))
        d = self.decode
        wanted = [f"data.image_keys={';'.join(d.image_keys)}"] if d.image_keys else []
        wanted.append(f"data.caption_key={d.caption_key}")
        if d.positive_key:
            wanted.append(f"objective.text_pairs.positive_key={d.positive_key}")
        if d.negatives:
            wanted.append(f"objective.text_pairs.negatives_key={d.negatives_key}")
        return DataError(
            f"none of the first {missing} samples read has the configured keys (last: "
            f"{raw['__url__']}, key {raw['__key__']}): {' and '.join(wanted)} "
            f"but it has {', '.join(seen) or 'no members'}; set those keys to match"
        )


def drain(skipped: Counter) -> list[tuple[str, str, int]]:
    """The counts as (reason, shard, n) rows, and reset."""
    rows = [(reason, url, n) for (reason, url), n in skipped.items()]
    skipped.clear()
    return rows
