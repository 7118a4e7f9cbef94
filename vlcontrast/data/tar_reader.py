"""Read raw samples from one WebDataset tar shard: members sharing a key form a sample.

The first stage of the data flow (``shards -> data/``). Shards are opened with
``webdataset.gopen``, so local paths, ``pipe:`` commands and fsspec URLs (http, s3, gs) all work.
Tar members are read by a small reader of our own rather than webdataset's pipeline stages or
Python's ``tarfile``: resuming mid-shard skips the first ``skip`` samples without reading their
payloads (seeking on local files), a truncated shard is told apart from a complete one, and each
member is read with one call (tarfile's stream mode copies it through 10 KB reads, which cost 10%
of the loader's time on 1600-px JPEGs; ``benchmarks/loader.py``).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from typing import Any

import webdataset as wds

from vlcontrast.data.limits import MAX_FILE_BYTES, Oversized

BLOCK = 512
# A member size beyond this is a damaged header, not an image or a caption: reading it would
# allocate that much (a GNU base-256 size field can claim 2^62 bytes).
MAX_MEMBER = 1 << 32


class Truncated(Exception):
    """The tar ends inside a header or a member's data."""


def _octal(field: bytes) -> int:
    if field[:1] in (b"\x80", b"\xff"):  # GNU base-256 for sizes of 8 GiB and more
        return int.from_bytes(field[1:], "big", signed=field[:1] == b"\xff")
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def _pax_path(data: bytes) -> str | None:
    """The ``path`` record of a pax extended header (``"%d path=%s\n"`` records)."""
    while data:
        length = int(data.split(b" ", 1)[0])
        record, data = data[:length], data[length:]
        key, _, value = record.split(b" ", 1)[1].rstrip(b"\n").partition(b"=")
        if key == b"path":
            return value.decode("utf-8", "surrogateescape")
    return None


def _read_exactly(stream, n: int) -> bytes:
    data = stream.read(n)
    while len(data) < n:  # pipes and sockets may return less than asked
        more = stream.read(n - len(data))
        if not more:
            raise Truncated()
        data += more
    return data


def _skip(stream, n: int) -> None:
    if n and isinstance(stream, io.BufferedReader) and stream.seekable():  # a local file
        end = stream.seek(n, 1)
        if end > stream.seek(0, 2):
            raise Truncated()
        stream.seek(end)
        return
    while n:
        chunk = stream.read(min(n, 1 << 20))
        if not chunk:
            raise Truncated()
        n -= len(chunk)


def iter_members(
    stream, wanted: Callable[[str], bool]
) -> Iterator[tuple[str, bytes | None, int, int]]:
    """(name, payload, offset, size) of the regular files of a tar stream, read with one call
    per member; ``offset`` is where the member's data starts in the (uncompressed) tar, so
    search can read one image back without unpacking the shard. The payload is None (and
    skipped, by seeking where possible) when ``wanted(name)`` is false, and an empty
    ``Oversized`` for a member over ``MAX_FILE_BYTES``. GNU long names and pax
    paths are honoured. Raises :class:`Truncated` on a cut tar. (Python's tarfile in stream mode
    copies each member through 10 KB reads and ends silently on a header cut short.)"""
    long_name: str | None = None
    position = 0  # bytes of the tar consumed so far
    while True:
        header = stream.read(BLOCK)
        position += BLOCK
        if len(header) < BLOCK:
            if header.strip(b"\0") or not header:
                raise Truncated()  # no end-of-archive blocks: cut short
            return
        if not header.strip(b"\0"):
            return  # end-of-archive block
        size, kind = _octal(header[124:136]), header[156:157]
        if not 0 <= size <= MAX_MEMBER:
            raise Truncated()  # a damaged size field: the rest of the shard cannot be framed
        padded = -(-size // BLOCK) * BLOCK
        if kind in (b"L", b"x"):  # the next member's name
            data = _read_exactly(stream, padded)[:size]
            position += padded
            long_name = data.rstrip(b"\0").decode() if kind == b"L" else _pax_path(data)
            continue
        name = long_name or _header_name(header)
        long_name = None
        offset, position = position, position + padded
        if kind not in (b"0", b"\0", b"7"):  # directories, links, global headers
            _skip(stream, padded)
            continue
        if wanted(name) and size > MAX_FILE_BYTES:  # never read: limits.Oversized says why
            _skip(stream, padded)
            yield name, Oversized(size), offset, size
        elif wanted(name):
            yield name, _read_exactly(stream, padded)[:size], offset, size
        else:
            _skip(stream, padded)
            yield name, None, offset, size


def _header_name(header: bytes) -> str:
    name = header[0:100].split(b"\0", 1)[0]
    if header[257:262] == b"ustar":
        prefix = header[345:500].split(b"\0", 1)[0]
        name = prefix + b"/" + name if prefix else name
    return name.decode("utf-8", "surrogateescape")


def iter_samples(
    url: str, skipped: Callable[[str], Any], skip: int = 0, offsets: bool = False
) -> Iterator[dict[str, Any]]:
    """Raw samples (``{"__key__", "__url__", ext: bytes}``) of the tar at ``url``, from the
    ``skip``-th on; the skipped samples' payloads are not read (local files: seeked over). A
    truncated or unreadable shard is reported through ``skipped(reason)``; the sample it cut
    short is dropped, not passed on as a sample with missing fields. ``offsets``: each sample
    also carries ``__offsets__`` ``{ext: (offset, size)}`` of its members in the tar."""
    try:
        stream = wds.gopen(url, "rb")
    except Exception:  # noqa: BLE001 - any opener failure is a bad shard, not a crash
        skipped("unreadable_shard")
        return
    if not url.endswith(".tar"):  # compressed (.tar.gz, ...): decompress as a stream
        stream = tarfile_stream(stream)
    current: dict[str, Any] | None = None
    index = -1
    keys: list[str | None] = [None]

    def wanted(name: str) -> bool:
        key = wds.tariterators.base_plus_ext(name)[0]
        if key is not None and key != keys[0]:
            keys[0] = key
            nonlocal index
            index += 1
        return index >= skip

    try:
        for name, data, offset, size in iter_members(stream, wanted):
            key, ext = wds.tariterators.base_plus_ext(name)
            if key is None or data is None:
                continue
            if current is not None and current["__key__"] != key:
                yield current
                current = None
            if current is None:
                current = {"__key__": key, "__url__": url}
                if offsets:
                    current["__offsets__"] = {}
            current[ext.lower()] = data
            if offsets:
                current["__offsets__"][ext.lower()] = (offset, size)
    except (Truncated, OSError, EOFError, ValueError, MemoryError):
        skipped("truncated_shard")
        # the cut fell in the next sample's members: the one before it is whole
        if current is None or current["__key__"] == keys[0]:
            return
    finally:
        stream.close()
    if current is not None:
        yield current


def tarfile_stream(raw):
    """A decompressing reader for ``.tar.gz``/``.tgz``/``.tar.bz2``/``.tar.xz`` shards."""
    import bz2
    import gzip
    import lzma

    head = raw.read(6)
    rest = _Prefixed(head, raw)
    if head[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=rest)
    if head[:3] == b"BZh":
        return bz2.BZ2File(rest)
    if head[:6] == b"\xfd7zXZ\x00":
        return lzma.LZMAFile(rest)
    return rest


class _Prefixed:
    """A stream with ``head`` put back in front."""

    def __init__(self, head: bytes, raw):
        self.head, self.raw = head, raw

    def read(self, n: int = -1) -> bytes:
        if not self.head:
            return self.raw.read(n)
        if 0 <= n <= len(self.head):
            data, self.head = self.head[:n], self.head[n:]
            return data
        data, self.head = self.head, b""
        return data + self.raw.read(n - len(data) if n >= 0 else -1)

    def close(self) -> None:
        self.raw.close()


def count_samples(url: str) -> int:
    """Number of samples (distinct keys) in the shard at ``url``; payloads are skipped."""
    keys: set = set()
    try:
        with wds.gopen(url, "rb") as stream:
            source = stream if url.endswith(".tar") else tarfile_stream(stream)
            for name, *_ in iter_members(source, lambda name: False):
                keys.add(wds.tariterators.base_plus_ext(name)[0])
    except Exception:  # noqa: BLE001 - a cut or unreadable shard counts what was read
        pass
    keys.discard(None)
    return len(keys)


def read_member(url: str, offset: int, size: int) -> bytes:
    """The ``size`` bytes at ``offset`` of the (uncompressed) tar at ``url``: one seek and one
    read for a local ``.tar``; other shards are streamed up to the member (compressed shards
    have no random access). Raises ``OSError`` when the shard is shorter than that."""
    with wds.gopen(url, "rb") as raw:
        stream = raw if url.endswith(".tar") else tarfile_stream(raw)
        _skip(stream, offset)
        try:
            return _read_exactly(stream, size)
        except Truncated:
            raise OSError(f"{url}: ends before byte {offset + size}") from None
