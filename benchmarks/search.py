#!/usr/bin/env python
"""Search backends on synthetic embeddings: build time, query latency, memory, recall@10.

    python benchmarks/search.py [--n 1000000] [--dim 512] [--queries 200] [--kinds ...]

Writes an index of ``--n`` clustered unit vectors (2,000 Gaussian clusters, like CLIP
embeddings of a web collection, not uniform noise) through ``search.layout`` in float16, then
measures, each backend in a fresh subprocess:

- ``exact``: vlcontrast's blockwise exact search (float32 block cache within its 2 GiB budget),
- ``exact-stream``: the same with no cache (every query streams the float16 memory map),
- ``flat``, ``hnsw``, ``ivfpq``: faiss, with vlcontrast's default parameters for each;

build seconds, p50/p99 latency of single queries (held-out points, not stored vectors),
recall@10 against exact search, peak RSS added by the backend (the memory-mapped matrix is
page cache, not counted) and the bytes it saves on disk. Ratios are against ``exact`` in the
same run. Also printed: the time to look up the records of k = 10,000 results, and the top-10
overlap of the float16 index with float32 search (the justification of the float16 default).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import GIB, peak_bytes, reset_peak, rss_bytes, run_isolated  # noqa: E402

UNIT_ROWS = 100_000


def clustered(n: int, dim: int, seed: int, centres: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = centres[rng.integers(0, len(centres), n)] + 0.06 * rng.standard_normal(
        (n, dim), dtype=np.float32
    )
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_index(index_dir: Path, n: int, dim: int, queries: int) -> np.ndarray:
    """Write the index; returns the (queries, D) held-out query vectors."""
    from vlcontrast.search import layout

    centres = np.random.default_rng(0).standard_normal((2000, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    index_dir.mkdir(parents=True)
    units = []
    for u, first in enumerate(range(0, n, UNIT_ROWS)):
        rows = min(UNIT_ROWS, n - first)
        x = clustered(rows, dim, seed=1 + u, centres=centres)
        records = [
            {"key": f"{first + i:09d}", "caption": f"caption of item {first + i}", "where": {}}
            for i in range(rows)
        ]
        layout.write_unit(index_dir, f"u{u:06d}", x, records, {}, "float16")
        units.append({"name": f"u{u:06d}", "source": 0, "url": f"{u:05d}.tar"})
    manifest = {
        "format": layout.FORMAT,
        "checkpoint": "none",
        "dim": dim,
        "dtype": "float16",
        "sources": [],
        "units": units,
    }
    layout.write_manifest(index_dir, manifest)
    return clustered(queries, dim, seed=10_000, centres=centres)


def run_one(kind: str, index_dir: str, queries_path: str, exact_path: str) -> dict:
    """One backend in this process: build, then single-query latencies and recall."""
    from vlcontrast.search.backends import ExactBackend, FaissBackend, build_faiss
    from vlcontrast.search.layout import IndexFiles

    files = IndexFiles.open(index_dir)
    queries = np.load(queries_path)
    if not kind.startswith("exact"):
        import faiss  # noqa: F401 - the library's own ~100 MiB are not the index's memory
    reset_peak()
    base = rss_bytes()
    start = time.perf_counter()
    disk = 0
    if kind.startswith("exact"):
        backend = ExactBackend(files, cache_bytes=0 if kind == "exact-stream" else 2 << 30)
        backend.search(queries[:1], 10)  # the first query fills the cache: part of the build
    else:
        build_faiss(files, kind)
        backend = FaissBackend.load(files)
        arrays = Path(index_dir) / "faiss.safetensors"  # flat saves none: the units are its vectors
        disk = os.path.getsize(arrays) if kind != "flat" else 0
    build_s = time.perf_counter() - start
    latencies, found = [], []
    for q in queries:
        t = time.perf_counter()
        _, rows = backend.search(q[None], 10)
        latencies.append(time.perf_counter() - t)
        found.append(rows[0])
    found = np.stack(found)
    result = {
        "build_s": build_s,
        "p50_ms": 1000 * float(np.percentile(latencies, 50)),
        "p99_ms": 1000 * float(np.percentile(latencies, 99)),
        "added_bytes": peak_bytes() - base,
        "disk_bytes": disk,
    }
    if kind == "exact":
        np.save(exact_path, found)
    else:
        exact = np.load(exact_path)
        result["recall_at_10"] = float(
            np.mean([len(set(a) & set(e)) / 10 for a, e in zip(found, exact, strict=True)])
        )
    return result


def side_figures(index_dir: Path, queries: np.ndarray) -> dict:
    """Look-up time for 10,000 records, and float16 vs float32 top-10 overlap."""
    import torch

    from vlcontrast.search.backends import ExactBackend
    from vlcontrast.search.layout import IndexFiles

    files = IndexFiles.open(index_dir)
    rows = np.random.default_rng(3).choice(len(files), min(10_000, len(files)), replace=False)
    files.records(rows[:100])  # open the line indexes once
    start = time.perf_counter()
    records = files.records(rows)
    lookup_ms = 1000 * (time.perf_counter() - start)
    assert [r["row"] for r in records] == rows.tolist()
    # float32 reference for the first unit: the stored float16 vectors round the float32 ones
    first = np.array(files.matrices[0], dtype=np.float32)
    sub = IndexFiles.open(index_dir)
    sub.matrices, sub.starts = [first], np.array([0, len(first)])
    _, half = ExactBackend(sub).search(queries, 10)
    exact32 = torch.from_numpy(queries) @ torch.from_numpy(first).T
    full = exact32.topk(10, dim=1).indices.numpy()
    overlap = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(half, full, strict=True)]))
    return {"lookup_ms": lookup_ms, "lookup_k": len(rows), "f16_overlap": overlap}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="indexed vectors")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=200, help="single queries timed")
    parser.add_argument("--kinds", default="exact,exact-stream,flat,hnsw,ivfpq")
    parser.add_argument("--dir", default="", help="work directory (default: a temporary one)")
    parser.add_argument("--one", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(*args.one)))
        return
    work = Path(args.dir or tempfile.mkdtemp(prefix="vlcontrast-search-bench-"))
    kinds = args.kinds.split(",")
    if kinds[0] != "exact":
        kinds = ["exact", *[k for k in kinds if k != "exact"]]  # the reference comes first
    try:
        start = time.perf_counter()
        queries = make_index(work / "index", args.n, args.dim, args.queries)
        np.save(work / "queries.npy", queries)
        print(
            f"{args.n} x {args.dim} float16 clustered embeddings written in "
            f"{time.perf_counter() - start:.0f} s; {args.queries} held-out single queries; "
            f"{os.cpu_count()} CPUs"
        )
        header = (
            f"{'backend':>12} | {'build s':>8} {'p50 ms':>8} {'p99 ms':>8} {'RAM GiB':>8} "
            f"{'disk GiB':>8} {'recall@10':>9} | {'p50 vs exact':>12} {'RAM vs exact':>12}"
        )
        print(header)
        print("-" * len(header))
        reference = None
        for kind in kinds:
            common = [kind, str(work / "index"), str(work / "queries.npy"), str(work / "exact.npy")]
            try:
                r = run_isolated(__file__, ["--one", *common])
            except RuntimeError as err:
                print(f"{kind:>12} | failed: {str(err).splitlines()[-1]}")
                continue
            reference = reference or r
            recall = r.get("recall_at_10", 1.0)
            print(
                f"{kind:>12} | {r['build_s']:>8.1f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
                f"{r['added_bytes'] / GIB:>8.3f} {r['disk_bytes'] / GIB:>8.3f} {recall:>9.3f} | "
                f"{r['p50_ms'] / reference['p50_ms']:>11.3f}x "
                f"{r['added_bytes'] / max(reference['added_bytes'], 1):>11.3f}x",
                flush=True,
            )
            (work / "index" / "faiss.json").unlink(missing_ok=True)
        side = side_figures(work / "index", queries)
        print(f"records of k = {side['lookup_k']} results looked up in {side['lookup_ms']:.0f} ms")
        print(
            f"float16 index vs float32 search: top-10 overlap {side['f16_overlap']:.3f} "
            f"(first {min(args.n, UNIT_ROWS)} vectors)"
        )
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
