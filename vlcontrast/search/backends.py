"""Nearest-neighbour search behind one interface: ``search(queries (Q, D), k) -> (scores (Q, k),
rows (Q, k))``, rows numbered as in ``search.layout``, best first.

- :class:`ExactBackend` (the default): inner products blockwise over the memory-mapped unit
  matrices, keeping a running top-k, so 10M x 512 float16 items are searched with one block
  (65,536 x D) in RAM at a time.
- :class:`FaissBackend` (``pip install faiss-cpu``, optional): flat, HNSW or IVF-PQ, chosen by
  collection size as autofaiss does (exact flat up to 100k items, HNSW up to 2M, IVF-PQ above,
  where the graph would not fit in RAM); every parameter can be set. The build reports recall@10
  against exact search on a sample of the collection's own vectors used as queries.

A saved faiss index is a file a stranger may hand over, so it is saved as checked arrays, never
faiss's own file format, and every array is checked before faiss sees it
(``search.faiss_file``). A file that fails a check is refused with what failed; ``auto`` then
searches exactly and says so.
"""

from __future__ import annotations

import json
import math
import sys
import time
from typing import Any

import numpy as np
import torch

from vlcontrast.search.faiss_file import (
    FAISS_ARRAYS,
    FAISS_FORMAT,
    check,
    faiss_arrays,
    load_index,
    new_faiss_index,
    refuse,
)
from vlcontrast.search.layout import BLOCK_ROWS, IndexFiles, write_atomic

FAISS_KINDS = ("flat", "hnsw", "ivfpq")
FAISS_DEFAULTS: dict[str, dict[str, int]] = {
    # HNSW: M=32, efConstruction=80, efSearch=128: recall@10 0.98 on 1M clustered 512-d vectors
    # (benchmarks/search.py). IVF-PQ: nlist ~ 4 sqrt(N), D/8 bytes per vector, 32 lists probed,
    # and the best rerank x k candidates re-scored exactly from the stored vectors (without it
    # recall@10 was 0.33 on that benchmark: PQ codes cannot order close neighbours).
    "hnsw": {"M": 32, "ef_construction": 80, "ef_search": 128},
    "ivfpq": {"nlist": 0, "pq_m": 0, "nprobe": 32, "rerank": 10},
    "flat": {},
}
RECALL_QUERIES = 1000
# Bounds on a loaded index's settings: each is a loop count or buffer size in faiss's search,
# so a crafted faiss.json could otherwise ask for any amount of time or memory per query.
PARAM_BOUNDS = {
    "M": (2, 512),
    "ef_construction": (1, 1 << 16),
    "ef_search": (1, 1 << 16),
    "nlist": (1, 1 << 24),
    "pq_m": (1, 1 << 12),
    "nprobe": (1, 1 << 24),
    "rerank": (1, 1000),
}


class ExactBackend:
    """Exact inner-product search. The first ``cache_bytes`` of the collection are kept as
    float32 blocks after the first query (a 1M x 512 index: 2 GiB, all of it), so repeated
    queries read memory instead of converting the float16 map again; the rest is streamed from
    the memory map a block at a time. With a ``device`` (a GPU), blocks are scored there and
    the cache lives in its memory."""

    name = "exact"

    def __init__(
        self,
        files: IndexFiles,
        block_rows: int = BLOCK_ROWS,
        cache_bytes: int = 2 << 30,
        device: str | torch.device = "cpu",
    ):
        self.files, self.block_rows, self.cache_bytes = files, block_rows, cache_bytes
        self.device = torch.device(device)
        self.cache: dict[tuple[int, int], torch.Tensor] = {}
        self.cached = 0

    def blocks(self):
        """(first row, (b, D) float32 tensor) over the collection, cached up to the budget."""
        for u, matrix in enumerate(self.files.matrices):
            for start in range(0, len(matrix), self.block_rows):
                block = self.cache.get((u, start))
                if block is None:
                    # a float32 copy: the memory map is read-only and may be float16
                    rows = matrix[start : start + self.block_rows]
                    block = torch.from_numpy(np.array(rows, dtype=np.float32))  # (b, D)
                    block = block.to(self.device)
                    if self.cached + block.nbytes <= self.cache_bytes:
                        self.cache[(u, start)] = block
                        self.cached += block.nbytes
                yield int(self.files.starts[u]) + start, block

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = torch.from_numpy(np.array(queries, dtype=np.float32))  # (Q, D), a writable copy
        q = q.to(self.device)
        k = min(k, len(self.files))
        best = torch.full((len(q), 0), -math.inf, device=self.device)
        rows = torch.zeros((len(q), 0), dtype=torch.long, device=self.device)
        for first, block in self.blocks():
            scores = q @ block.T  # (Q, b)
            top = scores.topk(min(k, scores.shape[1]), dim=1)
            best = torch.cat([best, top.values], dim=1)  # (Q, <= 2k)
            rows = torch.cat([rows, top.indices + first], dim=1)
            keep = best.topk(min(k, best.shape[1]), dim=1)
            best, rows = keep.values, rows.gather(1, keep.indices)
        return best.cpu().numpy(), rows.cpu().numpy()


def choose_kind(n: int) -> str:
    return "flat" if n <= 100_000 else "hnsw" if n <= 2_000_000 else "ivfpq"


def faiss_params(kind: str, n: int, dim: int, given: dict[str, Any]) -> dict[str, int]:
    if kind not in FAISS_KINDS:
        raise ValueError(f"faiss: unknown kind {kind!r}; use auto, {', '.join(FAISS_KINDS)}")
    try:
        params = {**FAISS_DEFAULTS[kind], **{str(k): int(v) for k, v in given.items()}}
    except (TypeError, ValueError, AttributeError):
        raise ValueError(f"faiss {kind}: parameters must be whole numbers, got {given!r}") from None
    unknown = set(params) - set(FAISS_DEFAULTS[kind])
    if unknown:
        raise ValueError(
            f"faiss {kind}: unknown parameter(s) {sorted(unknown)}; "
            f"known: {sorted(FAISS_DEFAULTS[kind]) or 'none'}"
        )
    if kind == "ivfpq":
        if not params["nlist"]:
            params["nlist"] = int(2 ** round(math.log2(max(16.0, 4 * math.sqrt(n)))))
        if not params["pq_m"]:
            params["pq_m"] = max(m for m in range(1, dim // 8 + 1) if dim % m == 0)
    for key, value in params.items():
        low, high = PARAM_BOUNDS[key]
        if not low <= value <= high:
            raise ValueError(f"faiss {kind}: {key}={value} is outside [{low}, {high}]")
    if kind == "ivfpq" and dim % params["pq_m"]:
        raise ValueError(f"faiss ivfpq: pq_m={params['pq_m']} must divide the dimension {dim}")
    return params


def _import_faiss():
    try:
        import faiss
    except ImportError:
        raise ValueError(
            "faiss is not installed: pip install faiss-cpu (or search with the "
            "default exact backend)"
        ) from None
    return faiss


def build_faiss(files: IndexFiles, kind: str = "auto", given: dict | None = None) -> dict:
    """Build, save (``faiss.safetensors`` + ``faiss.json``) and measure a faiss index of
    ``files``: :func:`make_faiss`, then :func:`save_faiss`."""
    start = time.perf_counter()
    backend = make_faiss(files, kind, given)
    return save_faiss(backend, time.perf_counter() - start)


def make_faiss(files: IndexFiles, kind: str = "auto", given: dict | None = None) -> FaissBackend:
    """A faiss index of ``files``, built in memory (``kind`` auto: :func:`choose_kind`)."""
    faiss = _import_faiss()
    n, dim = len(files), files.dim
    kind = choose_kind(n) if kind == "auto" else kind
    params = faiss_params(kind, n, dim, given or {})
    index = new_faiss_index(faiss, kind, dim, params)
    if kind == "ivfpq":
        index.train(training_sample(files, max(params["nlist"] * 39, 65536)))
    for _, block in files.blocks():
        index.add(block)
    return FaissBackend(files, index, kind, params)


def save_faiss(backend: FaissBackend, build_s: float) -> dict:
    """Write ``backend`` beside its collection as checked arrays (``faiss.safetensors``) and its
    description (``faiss.json``, with the recall@10 measured here); the description."""
    from safetensors.numpy import save

    files, kind = backend.files, backend.kind
    arrays, graph = faiss_arrays(_import_faiss(), backend.index, kind)
    # the json goes last and names the rows: an interrupted rebuild leaves a stale index
    (files.index_dir / "faiss.json").unlink(missing_ok=True)
    (files.index_dir / "faiss.index").unlink(missing_ok=True)  # format 1's file, if any
    write_atomic(files.index_dir / FAISS_ARRAYS, save(arrays))
    info = {
        "format": FAISS_FORMAT,
        "kind": kind,
        **({"graph": graph} if graph else {}),
        "params": backend.params,
        "rows": len(files),
        "build_s": build_s,
        "recall_at_10": recall_at_10(files, backend),
    }
    write_atomic(files.index_dir / "faiss.json", (json.dumps(info, indent=1) + "\n").encode())
    return info


def training_sample(files: IndexFiles, n: int, seed: int = 0) -> np.ndarray:
    rows = np.sort(np.random.default_rng(seed).choice(len(files), min(n, len(files)), False))
    return files.vectors(rows)


def recall_at_10(files: IndexFiles, backend, queries: int = RECALL_QUERIES) -> float:
    """Mean overlap of ``backend``'s top 10 with exact search's, over sampled stored vectors."""
    if not len(files):
        return 1.0
    q = training_sample(files, queries, seed=1)
    _, exact = ExactBackend(files, cache_bytes=0).search(q, 10)  # one streamed pass, no cache
    _, approx = backend.search(q, 10)
    hits = [
        len(set(a.tolist()) & set(e.tolist())) / max(1, len(e))
        for a, e in zip(approx, exact, strict=True)
    ]
    return float(np.mean(hits))


class FaissBackend:
    name = "faiss"

    def __init__(self, files: IndexFiles, index, kind: str, params: dict[str, int]):
        self.files, self.index, self.kind, self.params = files, index, kind, params
        if kind == "hnsw":
            index.hnsw.efSearch = params["ef_search"]
        if kind == "ivfpq":
            index.nprobe = params["nprobe"]

    @classmethod
    def load(cls, files: IndexFiles) -> FaissBackend | None:
        """The saved faiss index, or None when there is none or it is stale (rows were added
        after it was built); :class:`BadFaissIndex` when it fails a check."""
        where = files.index_dir
        info_path = where / "faiss.json"
        if not info_path.is_file():
            return None
        try:
            info = json.loads(info_path.read_text())
            rows, kind, params = info["rows"], info["kind"], info["params"]
        except (ValueError, KeyError, TypeError):
            refuse(where, "faiss.json is not a faiss index's description")
        if rows != len(files):
            return None
        check(
            info.get("format") == FAISS_FORMAT,
            where,
            "saved as faiss's own file by an earlier version, which is no longer read: faiss's "
            "parser is not hardened against crafted files",
        )
        check(isinstance(params, dict), where, "params is not a mapping")
        try:
            params = faiss_params(kind, rows, files.dim, params)
        except ValueError as error:
            refuse(where, str(error))
        index = load_index(_import_faiss(), files, kind, params, info)
        return cls(files, index, kind, params)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, len(self.files))
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        rerank = self.params.get("rerank", 1)
        scores, rows = self.index.search(queries, k * rerank)
        rows = rows.astype(np.int64)  # -1 where an approximate index found fewer
        if rerank > 1:
            scores, rows = self.rescore(queries, rows, k)
        return scores, rows

    def rescore(self, queries: np.ndarray, rows: np.ndarray, k: int):
        """Exact scores of the candidate ``rows`` (Q, C) from the stored vectors; the top k."""
        safe = np.where(rows >= 0, rows, 0)
        vectors = self.files.vectors(safe.reshape(-1)).reshape(*rows.shape, -1)  # (Q, C, D)
        exact = np.einsum("qd,qcd->qc", queries, vectors)  # (Q, C)
        exact[rows < 0] = -np.inf
        order = np.argsort(-exact, axis=1)[:, :k]
        top = np.take_along_axis(rows, order, 1)
        scores = np.take_along_axis(exact, order, 1)
        return scores, np.where(np.isfinite(scores), top, -1)


def open_backend(files: IndexFiles, name: str = "auto"):
    """``auto``: the saved faiss index when it is current, else exact search."""
    if name not in ("auto", "exact", "faiss"):
        raise ValueError(f"backend: unknown backend {name!r}; use auto, exact or faiss")
    if name == "exact":
        return ExactBackend(files)
    if name == "faiss" or (files.index_dir / "faiss.json").is_file():
        try:
            backend = FaissBackend.load(files)
        except ValueError as error:
            if name == "faiss":
                raise
            print(f"note: {error}; searching exactly", file=sys.stderr)
            backend = None
        if backend is not None:
            return backend
        if name == "faiss":
            raise ValueError(
                f"{files.index_dir}: no current faiss index; build one with "
                f"'vlcontrast index build ... --faiss auto'"
            )
    return ExactBackend(files)
