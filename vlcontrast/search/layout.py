"""A search index on disk: a manifest and, per unit (one shard, or a chunk of a folder or HF
dataset), its embeddings and records, each unit written atomically.

    DIR/index.json              manifest: checkpoint, dim, dtype, sources, units in row order
    DIR/units/u000000.npy       (n, D) image embeddings, float16 or float32, memory-mapped on load
    DIR/units/u000000.jsonl     one record per row: key, caption, label, where (image location)
    DIR/units/u000000.lines.npy (n + 1,) int64 byte offset of every line of the .jsonl
    DIR/units/u000000.done.json rows and skip counts: written last, so a unit without it is
                                embedded again by a resumed build
    DIR/faiss.safetensors,      an optional approximate index (``search.faiss_file``): its
    DIR/faiss.json              arrays (never faiss's own file format) and settings

An index is a file a stranger may hand over, so opening one runs nothing: a source or unit URL
that is a ``pipe:`` shell command (webdataset's, which reading an image would run) is refused
unless the user vouches for it (:func:`check_commands`: ``--allow-pipe``, or the same
``--data`` on the command line of a build), the server sends only bytes that are an image, and
a saved faiss index is checked array by array before faiss sees it (``search.faiss_file``).

Rows are numbered across units in manifest order. Metadata is looked up by row through the line
offsets (one slice of a memory map per row), so k = 10,000 records take milliseconds however
large the collection (clip-retrieval's users' complaint was slow look-ups on big result sets).
"""

from __future__ import annotations

import json
import mmap
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

FORMAT = 1
MANIFEST = "index.json"
DTYPES = ("float16", "float32")
BLOCK_ROWS = 65536  # rows read at a time: 128 MiB of 512-d float32


def write_atomic(path: Path, data: bytes) -> None:
    """``data`` to ``path`` through a temporary name and a rename: never half written."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def read_manifest(index_dir: str | Path) -> dict[str, Any]:
    path = Path(index_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"{index_dir}: not a search index (no {MANIFEST}); make one with "
            f"'vlcontrast index build --checkpoint CKPT --data URLS --out DIR'"
        )
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(
            f"{path}: index format {manifest.get('format')} (this version reads "
            f"{FORMAT}); build the index again"
        )
    return manifest


def shell_commands(manifest: dict[str, Any]) -> list[str]:
    """The ``pipe:`` URLs among an index's sources (``::``-joined lists too) and units: the
    shell commands that reading its images would run."""
    urls = [part.strip() for s in manifest["sources"] for part in str(s["data"]).split("::")]
    urls += [str(unit["url"]) for unit in manifest["units"]]
    return sorted({url for url in urls if url.startswith("pipe:")})


def is_remote(url: str) -> bool:
    """Whether reading ``url`` fetches from another machine: any scheme webdataset opens other
    than a local file or a ``pipe:`` (http, https, sftp, ftps, scp, gs, ais, hf, ...); a
    one-letter scheme is a Windows drive."""
    scheme = urlparse(str(url)).scheme.lower()
    return len(scheme) > 1 and scheme not in ("file", "pipe")


def check_commands(index_dir: str | Path, manifest: dict[str, Any], trusted=()) -> None:
    """A ValueError if reading the index's images would run a shell command that is not in
    ``trusted`` (the URLs the user gave; ``True``: any, ``--allow-pipe``; ``False``: none)."""
    if trusted is True:
        return
    allowed = set(trusted or ())
    strange = [url for url in shell_commands(manifest) if url not in allowed]
    if strange:
        raise ValueError(
            f"{index_dir}: this index reads its images through {len(strange)} shell "
            f"command(s) ({strange[0][:120]!r}...), which would run on this machine. An index "
            f"you made yourself: pass --allow-pipe. One from anyone else: build it again "
            f"from its shards"
        )


def write_manifest(index_dir: Path, manifest: dict[str, Any]) -> None:
    write_atomic(index_dir / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())


def unit_path(index_dir: Path, name: str, suffix: str) -> Path:
    return index_dir / "units" / f"{name}{suffix}"


def is_done(index_dir: Path, name: str) -> bool:
    return unit_path(index_dir, name, ".done.json").is_file()


def write_unit(
    index_dir: Path,
    name: str,
    img_emb: np.ndarray,
    records: list[dict[str, Any]],
    skipped: Counter,
    dtype: str,
) -> None:
    """One unit's files; the ``.done.json`` marker last, so a kill leaves it absent."""
    (index_dir / "units").mkdir(parents=True, exist_ok=True)
    lines = [(json.dumps(r, ensure_ascii=False) + "\n").encode() for r in records]
    starts = np.zeros(len(lines) + 1, dtype=np.int64)
    np.cumsum([len(line) for line in lines], out=starts[1:])
    write_atomic(unit_path(index_dir, name, ".jsonl"), b"".join(lines))
    write_atomic(unit_path(index_dir, name, ".lines.npy"), _npy(starts))
    matrix = np.ascontiguousarray(img_emb, dtype=dtype)  # (n, D)
    if matrix.ndim != 2 or len(matrix) != len(records):
        raise ValueError(f"unit {name}: {matrix.shape} embeddings for {len(records)} records")
    write_atomic(unit_path(index_dir, name, ".npy"), _npy(matrix))
    done = {"rows": len(records), "skipped": dict(skipped)}
    write_atomic(unit_path(index_dir, name, ".done.json"), (json.dumps(done) + "\n").encode())


def _npy(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


@dataclass
class IndexFiles:
    """The built part of an index, memory-mapped: ``matrices[u]`` (n_u, D), rows numbered
    across units; ``pending`` names the planned units that are not done yet."""

    index_dir: Path
    manifest: dict[str, Any]
    units: list[dict[str, Any]] = field(default_factory=list)
    matrices: list[np.ndarray] = field(default_factory=list)
    starts: np.ndarray = field(default_factory=lambda: np.zeros(1, dtype=np.int64))
    pending: list[str] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)

    @classmethod
    def open(cls, index_dir: str | Path) -> IndexFiles:
        index_dir = Path(index_dir)
        files = cls(index_dir, read_manifest(index_dir))
        counts = []
        for unit in files.manifest["units"]:
            if not is_done(index_dir, unit["name"]):
                files.pending.append(unit["name"])
                continue
            done = json.loads(unit_path(index_dir, unit["name"], ".done.json").read_text())
            files.skipped.update(done["skipped"])
            files.units.append(unit)
            counts.append(done["rows"])
            if done["rows"]:
                matrix = np.load(unit_path(index_dir, unit["name"], ".npy"), mmap_mode="r")
            else:
                matrix = np.zeros((0, files.dim), dtype=files.manifest["dtype"])
            files.matrices.append(matrix)
        files.starts = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=files.starts[1:])
        files._lines: dict[int, tuple[mmap.mmap | bytes, np.ndarray]] = {}
        return files

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def locate(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(unit position, row within the unit) of global ``rows``."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"row out of range (the index has {len(self)} rows)")
        unit = np.searchsorted(self.starts, rows, side="right") - 1
        return unit, rows - self.starts[unit]

    def records(self, rows) -> list[dict[str, Any]]:
        """The stored record of every row, plus ``row`` and the unit's ``url``."""
        out = []
        units, local = self.locate(rows)
        for row, u, i in zip(
            np.asarray(rows).tolist(), units.tolist(), local.tolist(), strict=True
        ):
            data, starts = self._unit_lines(u)
            record = json.loads(data[starts[i] : starts[i + 1]])
            record.update(row=row, url=self.units[u]["url"])
            out.append(record)
        return out

    def blocks(self, block_rows: int = BLOCK_ROWS):
        """(first row, (b, D) float32 block) over the whole collection in row order."""
        for u, matrix in enumerate(self.matrices):
            for start in range(0, len(matrix), block_rows):
                block = np.asarray(matrix[start : start + block_rows], dtype=np.float32)
                yield int(self.starts[u]) + start, block

    def vectors(self, rows) -> np.ndarray:
        """(len(rows), D) float32 embeddings of ``rows``."""
        units, local = self.locate(rows)
        out = np.empty((len(units), self.dim), dtype=np.float32)
        for u in np.unique(units).tolist():  # one fancy-indexed read per unit
            mask = units == u
            out[mask] = self.matrices[u][local[mask]]
        return out

    def unit_of(self, row: int) -> dict[str, Any]:
        return self.units[int(self.locate(np.array([row]))[0][0])]

    def _unit_lines(self, u: int):
        if u not in self._lines:
            name = self.units[u]["name"]
            starts = np.load(unit_path(self.index_dir, name, ".lines.npy"))
            with open(unit_path(self.index_dir, name, ".jsonl"), "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                data = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
            self._lines[u] = (data, starts)
        return self._lines[u]
