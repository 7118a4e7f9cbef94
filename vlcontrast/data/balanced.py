"""Class-balanced batches for metric learning: P classes x K samples per rank, from shards.

shards -> :func:`build_index` (one pass: each sample's label and where its image member lies)
-> :func:`epoch_plan` (the epoch's global list of P x K batches) -> :class:`BalancedDataset`
(stream ``s`` of rank ``r`` serves every ``ranks x streams``-th batch of the plan, reading the
images by offset) -> the trainer's usual ``ordered_batches``.

Why a plan and not a stream: a P x K batch needs K samples of each of P classes at once, which
a shuffle window of a stream does not hold for a dataset with thousands of classes (Stanford
Online Products: 11,318 classes of 2-12 images). The plan is a pure function of (labels, P, K,
seed, epoch), computed identically on every rank and worker, so

* no sample repeats within an epoch, across ranks and workers (the plan uses each once);
* the position is one counter per stream (``Cursor.window`` = the stream's batches taken), and
  a resumed run continues the exact plan (augmentations are seeded by (epoch, sample)).

This is what pytorch-metric-learning's ``MPerClassSampler`` does on one process, made
distributed and resumable (its issues 336 and 546 ask for both).

Planning an epoch: each class with at least K samples is shuffled and cut into groups of K (its
remainder waits for another epoch's shuffle); each batch then takes one group from each of P
distinct classes, drawn without replacement with probability proportional to the groups a class
has left (Efraimidis-Spirakis keys), so big and small classes drain together and few groups are
left when fewer than P classes remain. A class with fewer than K samples is left out, with a
message naming it. A sample whose image fails to decode drops its batch (counted by reason):
every batch stays exactly P x K.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from vlcontrast.data.decode import read_label
from vlcontrast.data.shards import ShardDataset, drain
from vlcontrast.data.skip import DataError, SkipSample
from vlcontrast.data.streams import Cursor
from vlcontrast.data.tar_reader import iter_samples, read_member


@dataclass
class LabelIndex:
    """Every usable sample of the shards: its shard, key, image member and label."""

    urls: list[str]
    shard: list[int] = field(default_factory=list)
    key: list[str] = field(default_factory=list)
    member: list[tuple[str, int, int]] = field(default_factory=list)  # (ext, offset, size)
    label: list[int] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> samples

    def __len__(self) -> int:
        return len(self.label)

    def raw(self, i: int) -> dict[str, Any]:
        """Sample ``i`` as a raw tar sample holding only its image member."""
        url = self.urls[self.shard[i]]
        ext, offset, size = self.member[i]
        return {"__key__": self.key[i], "__url__": url, ext: read_member(url, offset, size)}


def build_index(
    urls: list[str], image_keys: tuple[str, ...], label_key: str, progress: bool = False
) -> LabelIndex:
    """One pass over ``urls``: samples without an image or a label are counted, not indexed."""
    index, skipped = LabelIndex(list(urls)), Counter()
    shards = range(len(urls))
    if progress:
        from tqdm import tqdm

        shards = tqdm(shards, desc="indexing labels", unit="shard")
    for s in shards:
        for raw in iter_samples(urls[s], lambda reason: skipped.update([reason]), offsets=True):
            ext = next((k for k in image_keys if k in raw), None)
            if ext is None:
                skipped["missing_image"] += 1
                continue
            try:
                label = read_label(raw, label_key)
            except SkipSample as skip:
                skipped[skip.reason] += 1
                continue
            index.shard.append(s)
            index.key.append(raw["__key__"])
            index.member.append((ext, *raw["__offsets__"][ext]))
            index.label.append(label)
    index.skipped = dict(skipped)
    return index


def eligible_classes(labels: list[int], per_class: int) -> tuple[list[int], dict[int, int]]:
    """(classes with at least ``per_class`` samples, {class: count} of those with fewer)."""
    counts = Counter(labels)
    few = {c: n for c, n in sorted(counts.items()) if n < per_class}
    return sorted(c for c in counts if c not in few), few


def epoch_plan(
    labels: list[int] | np.ndarray, classes: int, per_class: int, seed: int, epoch: int
) -> list[np.ndarray]:
    """The epoch's batches: each ``classes x per_class`` sample indices, class by class."""
    labels = np.asarray(labels)
    rng = np.random.default_rng([seed, epoch, 0xBA1])
    groups: dict[int, list[np.ndarray]] = {}
    order = np.argsort(labels, kind="stable")  # one sort, not a scan of every label per class
    classes_sorted, starts = np.unique(labels[order], return_index=True)
    for c, members in zip(classes_sorted, np.split(order, starts[1:]), strict=True):
        members = rng.permutation(members)  # classes in sorted order: a fixed plan
        whole = len(members) // per_class
        if whole:
            groups[int(c)] = list(members[: whole * per_class].reshape(whole, per_class))
    names = np.array(sorted(groups), dtype=np.int64)
    left = np.array([len(groups[c]) for c in names], dtype=np.float64)
    batches = []
    while np.count_nonzero(left) >= classes:
        keys = np.where(left > 0, rng.random(len(names)) ** (1.0 / np.maximum(left, 1)), -1.0)
        chosen = np.sort(np.argpartition(-keys, classes - 1)[:classes])
        batches.append(np.concatenate([groups[int(names[j])].pop() for j in chosen]))
        left[chosen] -= 1
    return batches


@dataclass
class BalancedDataset(ShardDataset):
    """:class:`ShardDataset` whose streams serve the epoch plan's batches (P x K per rank)."""

    index: LabelIndex | None = None
    classes: int = 8  # P
    per_class: int = 4  # K
    _plans: dict[int, list[np.ndarray]] = field(default_factory=dict, repr=False)

    def check(self, streams: int) -> None:
        """Any shard count serves any number of streams (a stream may get no batch)."""

    def plan(self) -> list[np.ndarray]:
        epoch = self.position.epoch
        if epoch not in self._plans:
            labels, p, k = self.index.label, self.classes, self.per_class
            self._plans = {epoch: epoch_plan(labels, p, k, self.seed, epoch)}
        return self._plans[epoch]

    def stream_batches(self, stream: int) -> Iterator[dict[str, Any]]:
        streams = self.position.streams
        mine = self.plan()[self.rank * streams + stream :: self.world * streams]
        decode = replace(self.decode, label_key="", caption_key="")
        skipped: Counter = Counter()
        epoch, seen = self.position.epoch, 0
        for b in range(self.position.cursors[stream].window, len(mine)):
            samples = []
            for i in mine[b]:
                seen += 1
                raw = self.index.raw(int(i))
                try:
                    sample = decode(raw, random.Random(f"{self.seed}/{epoch}/{int(i)}"))
                except (SkipSample, OSError) as skip:
                    skipped[(getattr(skip, "reason", "unreadable_member"), raw["__url__"])] += 1
                    break
                sample["label"] = self.index.label[int(i)]
                samples.append(sample)
            if len(samples) < len(mine[b]):
                continue  # a bad sample drops its batch: batches stay P x K
            batch = self.collate_checked(samples, skipped)
            if batch is None:
                continue
            cursor = asdict(Cursor(window=b + 1))
            control = {"cursor": cursor, "seen": seen, "skipped": drain(skipped)}
            yield {"stream": stream, **control, "batch": batch}
            seen = 0
        yield {"stream": stream, "pad": True, "end": True, "seen": seen, "skipped": drain(skipped)}


def check_index(index: LabelIndex, classes: int, per_class: int) -> list[str]:
    """Refuse an index that cannot fill one batch; return the warnings to print."""
    eligible, few = eligible_classes(index.label, per_class)
    notes = []
    if few:
        shown = ", ".join(f"class {c}: {n}" for c, n in list(few.items())[:5])
        notes.append(
            f"data.samples_per_class={per_class}: {len(few)} class(es) have fewer samples and "
            f"are left out of every batch ({shown}{', ...' if len(few) > 5 else ''}); lower "
            f"data.samples_per_class to use them"
        )
    if len(eligible) < classes:
        raise DataError(
            f"data.batch_size / data.samples_per_class = {classes} classes per batch, but only "
            f"{len(eligible)} class(es) of {len(index)} labelled samples have at least "
            f"{per_class} samples; lower data.batch_size or data.samples_per_class"
        )
    return notes
