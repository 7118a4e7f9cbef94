"""Semantic textual similarity: the Spearman correlation between the cosine similarity of two
sentences' embeddings and gold similarity scores (the STS benchmark's metric, as
sentence-transformers' ``EmbeddingSimilarityEvaluator`` and SimCSE report it, x100).

The pairs come from a table the user supplies (.csv, .tsv, .jsonl or .parquet) with two text
columns and a score column (``text_fields``, ``score_field``: sentence1, sentence2, score by
default, the STS-B layout). A row with an empty sentence or a score that is not a number is
skipped and counted. Spearman's rho is Pearson's r on ranks, ties given their average rank.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import torch

from vlcontrast.data.convert import read_table


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """1-based ranks of ``x`` (N,), tied values sharing the mean of their ranks."""
    order = torch.argsort(x, stable=True)
    ranks = torch.empty(len(x), dtype=torch.float64)
    sorted_x = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x.double() - x.double().mean(), y.double() - y.double().mean()
    denominator = math.sqrt(float((x * x).sum() * (y * y).sum()))
    return float((x * y).sum()) / denominator if denominator else float("nan")


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    return pearson(average_ranks(x), average_ranks(y))


def read_pairs(
    path: str, fields: list[str], score_field: str, max_samples: int = 0
) -> tuple[list[str], list[str], list[float], Counter]:
    """(first sentences, second sentences, scores, skipped rows by reason) of a pairs table."""
    if len(fields) != 2:
        raise ValueError(f"text_fields: two columns, got {fields}")
    rows = read_table(path)
    if rows:
        missing = [c for c in (*fields, score_field) if c not in rows[0]]
        if missing:
            raise ValueError(
                f"{path}: no column {missing[0]!r} (columns: {list(rows[0])}); set "
                f"--text-fields and --score-field"
            )
    first, second, scores, skipped = [], [], [], Counter()
    for row in rows[:max_samples] if max_samples else rows:
        a, b = (str(row.get(f) or "").strip() for f in fields)
        try:
            score = float(row[score_field])
        except (TypeError, ValueError):
            skipped["bad_score"] += 1
            continue
        if not a or not b:
            skipped["empty_text"] += 1
            continue
        if math.isnan(score):
            skipped["bad_score"] += 1
            continue
        first.append(a)
        second.append(b)
        scores.append(score)
    return first, second, scores, skipped


def evaluate_sts(embedder, spec) -> dict[str, Any]:
    """``{"metrics": {"spearman", "pearson", "pairs"}, "skipped": {...}}``."""
    first, second, scores, skipped = read_pairs(
        spec.data, spec.text_fields, spec.score_field, spec.max_samples
    )
    if len(scores) < 2:
        raise ValueError(f"{spec.data}: {len(scores)} usable pair(s); STS needs at least 2")
    emb_a, emb_b = embedder.texts(first), embedder.texts(second)  # (N, D) unit-norm
    cosine = (emb_a * emb_b).sum(-1)  # (N,)
    gold = torch.tensor(scores, dtype=torch.float64)
    metrics = {
        "spearman": 100 * spearman(cosine, gold),
        "pearson": 100 * pearson(cosine, gold),
        "pairs": float(len(scores)),
    }
    return {"metrics": metrics, "skipped": dict(skipped)}
