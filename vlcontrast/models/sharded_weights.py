"""Reading a sharded checkpoint: the ``sharded/`` directory that every rank of an FSDP run writes
(``train/sharded_checkpoint.py``), in one process and without a process group, so evaluation,
search and export load an FSDP run's weights as they load any checkpoint's, and a resumed run
reads its own pieces onto any number of ranks.

The format holds nothing that can run code: each rank's pieces are one safetensors file
(``rank00000.safetensors``, ...) and ``index.json`` says where every piece of every tensor lives
(its global shape and dtype, then per piece the file, the offset in the full tensor and the
piece's shape). Keys are flat: ``model/{name}`` for the weights and ``optim/{name}/{slot}`` for
the optimizer's state (names hold dots, never a slash); a non-tensor optimizer value is a JSON
number in the index. The index is checked before a byte of a tensor is read: every piece lies
inside its tensor, no two overlap, together they cover it, and every file it names is a rank
file of this directory whose header agrees with it. The earlier format (``.metadata``, a pickle
that torch.distributed.checkpoint writes) is refused here; ``vlcontrast checkpoint convert
--trust-pickled-metadata`` rewrites it once for a user who trusts it (``train/legacy_shards.py``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vlcontrast.schema import ConfigError

SHARDS = "sharded"  # the directory inside a checkpoint
INDEX = "index.json"
LEGACY_METADATA = ".metadata"
MODEL, OPTIM = "model/", "optim/"
FORMAT = 1
_RANK_FILE = re.compile(r"^rank\d{5}\.safetensors$")
DTYPES = {
    str(dtype): dtype
    for dtype in (
        torch.float64, torch.float32, torch.float16, torch.bfloat16,
        torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool,
    )
}  # fmt: skip
_SAFETENSORS_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
}  # fmt: skip


def rank_file(rank: int) -> str:
    return f"rank{rank:05d}.safetensors"


@dataclass(frozen=True)
class Piece:
    file: str
    offset: tuple[int, ...]
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Entry:
    shape: tuple[int, ...]
    dtype: torch.dtype
    pieces: tuple[Piece, ...]


@dataclass(frozen=True)
class Index:
    directory: Path
    tensors: dict[str, Entry]
    values: dict[str, float | int | bool]
    headers: dict[str, dict[str, tuple[str, tuple[int, ...], int, int]]]  # per file


def has_shards(path: str | Path) -> bool:
    """Whether ``path`` holds a ``sharded/`` directory (of either format)."""
    return (Path(path) / SHARDS).is_dir()


def _damaged(directory: Path, why: str) -> ConfigError:
    return ConfigError(f"this checkpoint is damaged: {directory} ({why})")


def _ints(value: Any, what: str, directory: Path) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    ):
        raise _damaged(directory, f"{what} is not a list of sizes")
    return tuple(value)


def _overlap(a: Piece, b: Piece) -> bool:
    return all(
        max(oa, ob) < min(oa + sa, ob + sb)
        for oa, sa, ob, sb in zip(a.offset, a.shape, b.offset, b.shape, strict=True)
    )


def _entry(key: str, raw: Any, files: set[str], directory: Path) -> Entry:
    if not isinstance(raw, dict) or raw.get("dtype") not in DTYPES:
        raise _damaged(directory, f"{key}: no known dtype")
    shape = _ints(raw.get("shape"), f"{key} shape", directory)
    pieces = []
    for item in raw.get("pieces") or []:
        if not isinstance(item, dict) or item.get("file") not in files:
            raise _damaged(directory, f"{key}: a piece names a file the index does not list")
        piece = Piece(
            item["file"],
            _ints(item.get("offset"), f"{key} offset", directory),
            _ints(item.get("shape"), f"{key} piece shape", directory),
        )
        if len(piece.offset) != len(shape) or len(piece.shape) != len(shape):
            raise _damaged(directory, f"{key}: a piece has the wrong number of dimensions")
        if any(o + s > n for o, s, n in zip(piece.offset, piece.shape, shape, strict=True)):
            raise _damaged(directory, f"{key}: a piece lies outside the tensor")
        if any(_overlap(piece, other) for other in pieces):
            raise _damaged(directory, f"{key}: two pieces overlap")
        pieces.append(piece)
    covered = sum(torch.Size(p.shape).numel() for p in pieces)
    if covered != torch.Size(shape).numel():  # disjoint and inside, so equal volume covers it
        raise _damaged(directory, f"{key}: the pieces cover {covered} of its {shape} values")
    return Entry(shape, DTYPES[raw["dtype"]], tuple(pieces))


def read_index(directory: str | Path) -> Index:
    """The validated index of a ``sharded/`` directory (no tensor is read)."""
    directory = Path(directory)
    if (directory / LEGACY_METADATA).exists():
        raise ConfigError(
            f"refusing to load {directory}: it is in the earlier sharded format, whose "
            f"{LEGACY_METADATA} is a pickle that can run code. If you trust where it came from, "
            f"convert it once: vlcontrast checkpoint convert {directory.parent} "
            f"--trust-pickled-metadata"
        )
    try:
        raw = json.loads((directory / INDEX).read_text())
    except (OSError, ValueError) as err:
        raise _damaged(directory, f"{INDEX}: {err}") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise _damaged(directory, f"{INDEX} is not a format-{FORMAT} shard index")
    files = raw.get("files")
    if not isinstance(files, list) or not all(
        isinstance(f, str) and _RANK_FILE.match(f) for f in files
    ):
        raise _damaged(directory, f"{INDEX}: 'files' must list rankNNNNN.safetensors files")
    tensors = {
        key: _entry(key, value, set(files), directory)
        for key, value in (raw.get("tensors") or {}).items()
    }
    values = raw.get("values") or {}
    if not all(isinstance(v, (int, float, bool)) for v in values.values()):
        raise _damaged(directory, f"{INDEX}: a value is not a number")
    return Index(directory, tensors, values, _check_headers(directory, files, tensors))


def _header(file: Path) -> dict[str, tuple[str, tuple[int, ...], int, int]]:
    """A safetensors file's header, checked: ``{key: (dtype, shape, begin, end)}`` with absolute
    byte offsets. Read with plain file reads (no memory map), so reading a
    rank's region costs only that region."""
    size = file.stat().st_size
    with open(file, "rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        if not 2 <= length <= min(size - 8, 100 << 20):
            raise ValueError("not a safetensors file")
        raw = json.loads(handle.read(length))
    entries = {}
    for key, item in raw.items():
        if key == "__metadata__":
            continue
        begin, end = item["data_offsets"]
        shape = tuple(int(n) for n in item["shape"])
        entries[key] = (item["dtype"], shape, 8 + length + begin, 8 + length + end)
        if not 0 <= begin <= end <= size - 8 - length:
            raise ValueError(f"{key} lies outside the file")
    return entries


def _check_headers(directory: Path, files: list[str], tensors: dict[str, Entry]) -> dict:
    """Every piece is in its file with the index's shape and dtype; returns ``{file: header}``."""
    headers = {}
    for file in files:
        try:
            headers[file] = _header(directory / file)
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise _damaged(directory, f"{file}: {err}") from None
    for key, entry in tensors.items():
        seen = set()
        for piece in entry.pieces:
            found = headers[piece.file].get(key)
            itemsize = torch.empty((), dtype=entry.dtype).element_size()
            want = (_SAFETENSORS_DTYPES[entry.dtype], piece.shape)
            if (
                piece.file in seen
                or found is None
                or found[:2] != want
                or (found[3] - found[2] != torch.Size(piece.shape).numel() * itemsize)
            ):
                raise _damaged(directory, f"{piece.file}: {key} differs from the index")
            seen.add(piece.file)
    return headers


class Pieces:
    """The rank files of an index, each opened once for plain reads, closed on exit."""

    def __init__(self, index: Index):
        self.index, self._open = index, {}

    def __enter__(self) -> Pieces:
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._open.values():
            handle.close()
        self._open.clear()

    def _read(self, file: str, start: int, out: torch.Tensor) -> None:
        """``out.numel()`` values from byte ``start`` of ``file`` into contiguous ``out``."""
        if file not in self._open:
            self._open[file] = open(self.index.directory / file, "rb")  # noqa: SIM115
        handle = self._open[file]
        handle.seek(start)
        view = out.reshape(-1).view(torch.uint8).numpy()
        if handle.readinto(memoryview(view)) != view.nbytes:
            raise _damaged(self.index.directory, f"{file} is shorter than its header says")

    def read_into(self, key: str, target: torch.Tensor, offset: tuple[int, ...]) -> None:
        """Fill ``target``, the region of tensor ``key`` that starts at ``offset``, from every
        piece that overlaps it (a resharding read: pieces and region need not line up). Each
        piece's overlapping rows are one contiguous byte range, read straight into ``target``
        when the columns line up too, else through a buffer of those rows."""
        entry = self.index.tensors[key]
        headers = self.index.headers
        if target.ndim == 0:  # a 0-d tensor is one piece
            piece = entry.pieces[0]
            buffer = torch.empty((), dtype=entry.dtype)
            self._read(piece.file, headers[piece.file][key][2], buffer.reshape(1))
            target.copy_(buffer)
            return
        region = Piece("", tuple(offset), tuple(target.shape))
        for piece in entry.pieces:
            if not _overlap(region, piece):
                continue
            lo = [max(a, b) for a, b in zip(region.offset, piece.offset, strict=True)]
            hi = [
                min(a + s, b + z)
                for a, s, b, z in zip(
                    region.offset, region.shape, piece.offset, piece.shape, strict=True
                )
            ]
            row = torch.Size(piece.shape[1:]).numel() * target.element_size()
            start = headers[piece.file][key][2] + (lo[0] - piece.offset[0]) * row
            inside = tuple(
                slice(a - o, b - o) for a, b, o in zip(lo, hi, region.offset, strict=True)
            )
            rows = (hi[0] - lo[0], *piece.shape[1:])
            destination = target[inside]
            if tuple(destination.shape) == rows and destination.is_contiguous():
                self._read(piece.file, start, destination)
                continue
            buffer = torch.empty(rows, dtype=entry.dtype)
            self._read(piece.file, start, buffer)
            columns = tuple(
                slice(a - o, b - o)
                for a, b, o in zip(lo[1:], hi[1:], piece.offset[1:], strict=True)
            )
            destination.copy_(buffer[(slice(None), *columns)])


def read_tensors(
    path: str | Path, prefix: str = "", index: Index | None = None
) -> dict[str, torch.Tensor]:
    """Every full tensor of a sharded checkpoint whose key starts with ``prefix`` (the prefix
    dropped), on the CPU, in this process alone; ``index``: one already read."""
    index = index or read_index(Path(path) / SHARDS)
    tensors = {}
    with Pieces(index) as pieces:
        for key, entry in index.tensors.items():
            if key.startswith(prefix):
                tensor = torch.empty(entry.shape, dtype=entry.dtype)
                pieces.read_into(key, tensor, (0,) * len(entry.shape))
                tensors[key[len(prefix) :]] = tensor
    return tensors
