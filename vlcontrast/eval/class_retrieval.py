"""Retrieval by class, as metric learning reports it: Recall@K, R-precision and MAP@R (Musgrave,
Belongie & Lim 2020, "A Metric Learning Reality Check", section 3.2) of labelled embeddings.

Each query ranks the gallery by cosine similarity; with no separate gallery the query set is
its own gallery and each query is left out of its own ranking. For a query with R relevant
items (same label, itself excluded): Recall@K is 1 when one of the K nearest is relevant (the
metric-learning papers' "recall", not the fraction of relevant items found); R-precision is
the fraction of the R nearest that are relevant; MAP@R is ``1/R sum_{i<=R} P(i) rel(i)``, the
average precision truncated at R. Queries without a relevant item are left out and counted.
Queries are scored a block at a time, so memory is (block, gallery) however large the set is.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def class_retrieval_metrics(
    query: torch.Tensor,
    query_labels: torch.Tensor,
    gallery: torch.Tensor | None = None,
    gallery_labels: torch.Tensor | None = None,
    ks: Sequence[int] = (1, 2, 4, 8),
    block: int = 1024,
) -> dict[str, float]:
    """``query`` (Q, D) and ``gallery`` (G, D) unit-norm embeddings with integer labels."""
    itself = gallery is None
    if itself:
        gallery, gallery_labels = query, query_labels
    counts = torch.bincount(gallery_labels, minlength=int(query_labels.max()) + 1)
    relevant = counts[query_labels] - (1 if itself else 0)  # (Q,) R per query
    depth = min(len(gallery) - (1 if itself else 0), max(max(ks), int(relevant.max())))
    hits_at: dict[int, int] = dict.fromkeys(ks, 0)
    r_precision, map_at_r, scored = 0.0, 0.0, 0
    for start in range(0, len(query), block):
        sim = query[start : start + block] @ gallery.T  # (b, G)
        if itself:
            rows = torch.arange(len(sim))
            sim[rows, start + rows] = float("-inf")
        order = sim.topk(depth, dim=1).indices  # (b, depth), nearest first
        rel = gallery_labels[order] == query_labels[start : start + block, None]  # (b, depth)
        r = relevant[start : start + block]
        keep = r > 0
        rel, r = rel[keep], r[keep]
        scored += int(keep.sum())
        for k in ks:
            hits_at[k] += int(rel[:, :k].any(1).sum())
        within = torch.arange(depth)[None, :] < r[:, None]  # (b, depth): rank < R
        rel_r = (rel & within).double()
        r = r.double()
        r_precision += float((rel_r.sum(1) / r).sum())
        precision = rel_r.cumsum(1) / torch.arange(1, depth + 1, dtype=torch.float64)  # P(i)
        map_at_r += float(((precision * rel_r).sum(1) / r).sum())
    if scored == 0:
        raise ValueError("class retrieval: no query has another item of its class")
    out = {f"recall@{k}": hits_at[k] / scored for k in ks}
    out.update(
        r_precision=r_precision / scored,
        map_at_r=map_at_r / scored,
        queries=scored,
        queries_without_match=len(query) - scored,
    )
    return out
