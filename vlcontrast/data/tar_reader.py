"""Read raw samples from one WebDataset tar shard: members sharing a key form a sample.

The first stage of the data flow (``shards -> data/``). Shards are opened with
``webdataset.gopen``, so local paths, ``pipe:`` commands and fsspec URLs (http, s3, gs) all work.
Tar members are read with Python's streaming ``tarfile`` rather than webdataset's pipeline
stages, because resuming mid-shard needs to skip the first ``skip`` samples without reading their
payloads, and a truncated shard must be told apart from a complete one (see ``_TailReader``).
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable, Iterator
from typing import Any

import webdataset as wds


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


def iter_samples(
    url: str, skipped: Callable[[str], Any], skip: int = 0
) -> Iterator[dict[str, Any]]:
    """Raw samples (``{"__key__", "__url__", ext: bytes}``) of the tar at ``url``, from the
    ``skip``-th on; the skipped samples' payloads are not read. A truncated or unreadable shard is
    reported through ``skipped(reason)``; the sample it cut short is dropped, not passed on as a
    sample with missing fields."""
    try:
        stream = wds.gopen(url, "rb")
    except Exception:  # noqa: BLE001 - any opener failure is a bad shard, not a crash
        skipped("unreadable_shard")
        return
    plain = url.endswith(".tar")  # compressed streams end with their own trailer, not zeros
    reader = _TailReader(stream)
    current: dict[str, Any] | None = None
    index = -1
    try:
        with tarfile.open(fileobj=reader, mode="r|" if plain else "r|*") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                key, ext = wds.tariterators.base_plus_ext(info.name)
                if key is None:
                    continue
                if current is None or current["__key__"] != key:
                    if current is not None and index >= skip:
                        yield current
                    index += 1
                    current = {"__key__": key, "__url__": url}
                if index >= skip:
                    current[ext.lower()] = tar.extractfile(info).read()
        if plain and reader.truncated():
            raise EOFError("tar ends inside a header")
    except (tarfile.TarError, OSError, EOFError):
        skipped("truncated_shard")
        return
    finally:
        stream.close()
    if current is not None and index >= skip:
        yield current


def count_samples(url: str) -> int:
    """Number of samples (distinct keys) in the shard at ``url``; payloads are skipped."""
    keys: set = set()
    try:
        with wds.gopen(url, "rb") as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
            keys.update(wds.tariterators.base_plus_ext(i.name)[0] for i in tar if i.isfile())
    except Exception:  # noqa: BLE001 - an unreadable shard holds no usable sample
        pass
    keys.discard(None)
    return len(keys)
