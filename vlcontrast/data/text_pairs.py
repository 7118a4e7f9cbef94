"""A table of text pairs (anchor, positive[, hard negatives]) -> shards the ``text_pairs``
task reads: ``{key}.txt`` is the anchor and ``{key}.json`` holds ``positive`` and
``negatives`` (the task's default ``objective.text_pairs.positive_key=json.positive`` and
``negatives_key=json.negatives``). A row with an empty anchor or positive is skipped and
counted, never written; a table without the named columns is one message naming them.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vlcontrast.data.convert import read_table
from vlcontrast.data.shard_writer import write_shards


def pair_samples(
    rows: list[dict[str, Any]], anchor: str, positive: str, negatives: list[str], skipped: Counter
) -> Iterator[dict[str, Any]]:
    for i, row in enumerate(rows):
        a, p = str(row.get(anchor) or "").strip(), str(row.get(positive) or "").strip()
        if not a or not p:
            skipped["empty_anchor_or_positive"] += 1
            continue
        negs = [str(row.get(c) or "").strip() for c in negatives]
        record = {"positive": p, "negatives": [n for n in negs if n]}
        yield {"__key__": f"{i:09d}", "txt": a, "json": json.dumps(record, ensure_ascii=False)}


def write_pair_shards(
    table: str | Path,
    out: str | Path,
    anchor: str = "anchor",
    positive: str = "positive",
    negatives: tuple[str, ...] = (),
    per_shard: int = 10000,
) -> dict[str, Any]:
    """Write the pairs of ``table`` (.csv, .tsv, .jsonl, .parquet) as shards under ``out``."""
    rows = read_table(table)
    if rows:
        missing = [c for c in (anchor, positive, *negatives) if c not in rows[0]]
        if missing:
            raise ValueError(
                f"{table}: no column {missing[0]!r} (columns: {list(rows[0])}); set "
                f"--anchor-column, --positive-column or --negative-columns"
            )
    skipped: Counter = Counter()
    sizes = write_shards(
        pair_samples(rows, anchor, positive, list(negatives), skipped), out, per_shard
    )
    return {"pairs": sum(sizes.values()), "shards": len(sizes), "skipped": dict(skipped)}
