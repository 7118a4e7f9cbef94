#!/usr/bin/env python
"""Loading a saved faiss index: vlcontrast's checked arrays against faiss's own reader.

    python benchmarks/faiss_load.py [--n 100000] [--dim 128] [--kinds flat,hnsw,ivfpq]

A faiss index is saved as safetensors arrays and checked on load (``search.faiss_file``), not
read by ``faiss.read_index``, whose C++ parser trusts a stranger's file. This prints what that
costs: for each kind, built once on ``--n`` clustered float16 embeddings (as
``benchmarks/search.py``), the median of 3 loads through ``FaissBackend.load`` (read, check,
copy into a new index, the vectors taken from the index's own units) against ``faiss.read_index``
of the same index written by ``faiss.write_index`` in the same run, the bytes each saves on disk
(faiss's file holds a copy of the vectors for flat and HNSW; ours does not), and whether the two
loaded indexes return the same neighbours.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search import make_index  # noqa: E402


def timed(load, repeats: int = 3) -> tuple[float, object]:
    seconds, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = load()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), result


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="indexed vectors")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--kinds", default="flat,hnsw,ivfpq")
    args = parser.parse_args(argv)
    import faiss

    from vlcontrast.search import backends, faiss_file
    from vlcontrast.search.layout import IndexFiles

    rows = []
    with tempfile.TemporaryDirectory(prefix="vlcontrast-faiss-load-") as work:
        queries = make_index(Path(work) / "index", args.n, args.dim, 200)
        files = IndexFiles.open(Path(work) / "index")
        print(f"{args.n} x {args.dim} float16 embeddings; {os.cpu_count()} CPUs")
        print(
            f"{'kind':>6} {'ours s':>8} {'faiss s':>8} {'ours/faiss':>10} | "
            f"{'ours MiB':>9} {'faiss MiB':>9} | same neighbours"
        )
        for kind in args.kinds.split(","):
            built = backends.make_faiss(files, kind)
            backends.save_faiss(built, 0.0)
            theirs_path = Path(work) / f"{kind}.faissindex"
            faiss.write_index(built.index, str(theirs_path))
            ours_s, ours = timed(lambda: backends.FaissBackend.load(files))
            theirs_s, theirs = timed(lambda p=theirs_path: faiss.read_index(str(p)))
            ours_bytes = sum(
                p.stat().st_size
                for p in (files.index_dir / faiss_file.FAISS_ARRAYS, files.index_dir / "faiss.json")
                if p.is_file() and (kind != "flat" or p.name == "faiss.json")
            )
            theirs_bytes = theirs_path.stat().st_size
            for param, value in (("efSearch", "ef_search"), ("nprobe", "nprobe")):
                if value in ours.params:
                    target = theirs.hnsw if param == "efSearch" else theirs
                    setattr(target, param, ours.params[value])
            same = np.array_equal(ours.index.search(queries, 10)[1], theirs.search(queries, 10)[1])
            row = {
                "kind": kind,
                "ours_s": ours_s,
                "faiss_s": theirs_s,
                "ours_bytes": ours_bytes,
                "faiss_bytes": theirs_bytes,
                "same": same,
            }
            rows.append(row)
            print(
                f"{kind:>6} {ours_s:>8.3f} {theirs_s:>8.3f} {ours_s / theirs_s:>9.2f}x | "
                f"{ours_bytes / 2**20:>9.1f} {theirs_bytes / 2**20:>9.1f} | {same}"
            )
    return rows


if __name__ == "__main__":
    main()
