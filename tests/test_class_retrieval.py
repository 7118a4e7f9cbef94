"""Recall@K, R-precision and MAP@R (eval/class_retrieval.py) against a brute-force numpy
computation of Musgrave et al.'s definitions, with the query set as its own gallery and with a
separate gallery, in blocks smaller than the set."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vlcontrast.eval.class_retrieval import class_retrieval_metrics


def brute_force(q, ql, g, gl, ks, itself):
    out = {f"recall@{k}": [] for k in ks}
    out["r_precision"], out["map_at_r"] = [], []
    for i in range(len(q)):
        sims = g @ q[i]
        candidates = [j for j in range(len(g)) if not (itself and j == i)]
        ranked = sorted(candidates, key=lambda j: -sims[j])
        rel = [gl[j] == ql[i] for j in ranked]
        r = sum(rel)
        if r == 0:
            continue
        for k in ks:
            out[f"recall@{k}"].append(float(any(rel[:k])))
        out["r_precision"].append(sum(rel[:r]) / r)
        ap = sum(sum(rel[: i + 1]) / (i + 1) for i in range(r) if rel[i]) / r
        out["map_at_r"].append(ap)
    return {k: float(np.mean(v)) for k, v in out.items()}


@pytest.mark.parametrize("itself", [True, False])
def test_class_retrieval_matches_brute_force(itself):
    gen = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(37, 6, generator=gen, dtype=torch.float64), dim=-1)
    ql = torch.randint(0, 5, (37,), generator=gen)
    ql[0] = 9  # a class of one: no match when the query set is its own gallery
    g = F.normalize(torch.randn(23, 6, generator=gen, dtype=torch.float64), dim=-1)
    gl = torch.randint(0, 5, (23,), generator=gen)
    ks = (1, 2, 4, 8)
    args = (q, ql) if itself else (q, ql, g, gl)
    got = class_retrieval_metrics(*args, ks=ks, block=8)
    want = brute_force(
        q.numpy(),
        ql.tolist(),
        *(((q.numpy(), ql.tolist())) if itself else (g.numpy(), gl.tolist())),
        ks,
        itself,
    )
    for name, value in want.items():
        assert got[name] == pytest.approx(value, abs=1e-12), name
    assert got["queries_without_match"] == 1  # the class of one
    assert 0 < got["map_at_r"] <= got["r_precision"] <= 1


def test_perfect_clusters_score_one_and_random_embeddings_score_low():
    labels = torch.arange(10).repeat_interleave(5)
    centres = F.normalize(torch.randn(10, 16, generator=torch.Generator().manual_seed(1)), dim=-1)
    perfect = class_retrieval_metrics(centres[labels], labels)
    assert perfect["map_at_r"] == 1.0 and perfect["recall@1"] == 1.0
    noise = F.normalize(torch.randn(50, 16, generator=torch.Generator().manual_seed(2)), dim=-1)
    assert class_retrieval_metrics(noise, labels)["map_at_r"] < 0.3
