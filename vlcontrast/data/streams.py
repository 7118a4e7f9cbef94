"""One stream's sample order: shard sequence -> raw samples -> windowed shuffle, with a cursor.

Each rank reads ``streams`` logical streams (``data.streams``, fixed for a run); a stream owns a
sequence of shards and turns it into a deterministic sample order. Dataloader workers serve whole
streams (``shards.ShardDataset``), so the order does not depend on the number of workers.

* Epoch mode: the shard list is shuffled per epoch from the seed and dealt to the
  ``ranks x streams`` streams; every sample is seen at most once per epoch (a stream's last
  partial batch is dropped, see ``shards``).
* Resampled mode: shard ``j`` of a stream is drawn (source by weight, then shard uniformly) from
  a generator seeded by (seed, stream, j), so the sequence is infinite, deterministic, and
  resumable at any ``j`` without replaying the draws before it.
* Shuffling: raw samples are read in windows of ``data.shuffle_buffer`` and each window is served
  in a seeded random order. Unlike webdataset's rolling buffer, whose content at any point depends
  on every sample before it, a window is fully described by where it starts, so the
  :class:`Cursor` (window start + outputs taken) resumes the exact order after re-reading at most
  one window. Shards still mix: a window spans shard boundaries, and shards are shuffled.
* Augmentation randomness comes from a generator seeded per output (stream, window, position), so
  a resumed or re-split run augments every sample exactly as the uninterrupted run did.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from vlcontrast.data.sources import Source
from vlcontrast.data.tar_reader import iter_samples

ShardAt = Callable[[int], "str | None"]  # index in the stream's shard sequence -> URL or end


@dataclass
class Cursor:
    """Where a stream stands: its current window (the ``window``-th) starts at raw sample
    ``skip`` of the ``shard``-th shard of its sequence, and ``taken`` of its outputs are used."""

    window: int = 0
    shard: int = 0
    skip: int = 0
    taken: int = 0
    done: bool = False


def epoch_shards(urls: list[str], seed: int, epoch: int, stream: int, streams: int) -> ShardAt:
    """Epoch mode: this stream's share of the shard list shuffled for ``epoch``."""
    order = list(urls)
    random.Random(f"{seed}/{epoch}").shuffle(order)
    mine = order[stream::streams]
    return lambda j: mine[j] if j < len(mine) else None


def resampled_shards(sources: list[Source], seed: int, stream: int) -> ShardAt:
    """Resampled mode: an infinite, weighted draw with replacement, random-access by index."""
    weights = [source.weight for source in sources]

    def shard_at(j: int) -> str:
        rng = random.Random(f"{seed}/{stream}/{j}")
        source = rng.choices(sources, weights=weights)[0]
        return source.urls[rng.randrange(len(source.urls))]

    return shard_at


class RawReader:
    """Raw samples of a shard sequence from (``shard``, ``skip``) on, across shard ends.

    ``empty_limit`` = (n, make_error): after n shards in a row without a single sample (all
    missing, unreadable or garbage), raise ``make_error(n)`` instead of drawing shards forever
    (a resampled sequence never ends)."""

    def __init__(
        self,
        shard_at: ShardAt,
        shard: int,
        skip: int,
        skipped: Callable,
        empty_limit: tuple[int, Callable[[int], Exception]] | None = None,
    ):
        self.shard_at, self.shard, self.skip, self.skipped = shard_at, shard, skip, skipped
        self.empty_limit, self.empty_run, self.in_shard = empty_limit, 0, 0
        self._samples: Iterator | None = None

    def take(self, n: int) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        while len(items) < n:
            if self._samples is None:
                url = self.shard_at(self.shard)
                if url is None:
                    break
                report = functools.partial(self.skipped, url=url)
                self._samples, self.in_shard = iter_samples(url, report, self.skip), 0
            raw = next(self._samples, None)
            if raw is None:
                self.shard, self.skip, self._samples = self.shard + 1, 0, None
                self.empty_run = 0 if self.in_shard else self.empty_run + 1
                if self.empty_limit and self.empty_run >= self.empty_limit[0]:
                    raise self.empty_limit[1](self.empty_run)
                continue
            items.append(raw)
            self.skip += 1
            self.in_shard += 1
        return items


def stream_outputs(
    shard_at: ShardAt,
    cursor: Cursor,
    window: int,
    seed: str,
    skipped: Callable,
    empty_limit: tuple[int, Callable[[int], Exception]] | None = None,
) -> Iterator[tuple[dict[str, Any], random.Random, Cursor]]:
    """(raw sample, its augmentation generator, the cursor just after it), in stream order."""
    reader = RawReader(shard_at, cursor.shard, cursor.skip, skipped, empty_limit)
    index, start, taken = cursor.window, (cursor.shard, cursor.skip), cursor.taken
    while True:
        items = reader.take(window)
        if not items:
            return
        order = list(range(len(items)))
        random.Random(f"{seed}/w{index}").shuffle(order)
        for position in range(taken, len(items)):
            raw = items[order[position]]
            items[order[position]] = None  # free the bytes as soon as they are served
            if position + 1 < len(items):
                after = Cursor(index, start[0], start[1], position + 1)
            else:
                after = Cursor(index + 1, reader.shard, reader.skip, 0)
            yield raw, random.Random(f"{seed}/{index}/{position}"), after
        index, start, taken = index + 1, (reader.shard, reader.skip), 0
