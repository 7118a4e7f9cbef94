"""Near-duplicate groups of an indexed collection: a common cleaning step before training.

Every item's ``k`` nearest neighbours come from the index's backend (exact, or faiss for large
collections, so the cost is N queries rather than N^2 products); pairs with cosine similarity at
least ``threshold`` are linked, and linked items form a group (union-find), so a chain of near
copies is one group even when it is longer than ``k``. The table has one row per item of every
group: ``group, row, key, url, score`` (similarity to the group's first item), first items first.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from vlcontrast.search.backends import open_backend
from vlcontrast.search.layout import IndexFiles


def find_groups(files: IndexFiles, threshold: float, k: int = 16, backend=None) -> list[list[int]]:
    """Groups (lists of rows, ascending) of at least two items linked at ``threshold``."""
    backend = backend or open_backend(files)
    parent = np.arange(len(files))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for first, block in files.blocks(4096):
        scores, rows = backend.search(block, k + 1)  # (b, k+1): the item itself is among them
        for i, (row_scores, row_ids) in enumerate(zip(scores, rows, strict=True)):
            me = first + i
            for score, other in zip(row_scores.tolist(), row_ids.tolist(), strict=True):
                if other >= 0 and other != me and score >= threshold:
                    a, b = root(me), root(other)
                    if a != b:
                        parent[max(a, b)] = min(a, b)
    groups: dict[int, list[int]] = {}
    for row in range(len(files)):
        groups.setdefault(root(row), []).append(row)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: g[0])


def dedup_index(
    index_dir: str | Path, threshold: float, out: str | Path | None = None, k: int = 16
) -> dict[str, Any]:
    """Write the near-duplicate table of the index in ``index_dir``; returns counts and path."""
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"--threshold: a cosine similarity in [-1, 1], got {threshold}")
    if k < 1:
        raise ValueError(f"-k: at least 1, got {k}")
    files = IndexFiles.open(index_dir)
    groups = find_groups(files, threshold, k)
    out = Path(out) if out else Path(index_dir) / "duplicates.tsv"
    with open(out, "w", newline="") as handle:
        table = csv.writer(handle, delimiter="\t")
        table.writerow(["group", "row", "key", "url", "score"])
        for number, group in enumerate(groups):
            vectors = files.vectors(group)  # (g, D)
            scores = vectors @ vectors[0]  # (g,)
            for row, record, score in zip(group, files.records(group), scores, strict=True):
                table.writerow([number, row, record["key"], record["url"], f"{score:.4f}"])
    items = sum(len(g) for g in groups)
    return {
        "groups": len(groups),
        "items": items,
        "removable": items - len(groups),
        "table": str(out),
        "groups_rows": groups,
    }
