"""Distributed equivalence: W gloo processes on CPU (W = 2 and 4), each with its slice of one
global batch, must give the single-process full-batch loss (averaged over ranks) and gradients
(after DDP averaging) for every loss mode, tiled and gradient-cached variants and uneven batches.

This is the test that catches the classic 1/world_size gradient bug: a gather whose backward
keeps only the local gradient fails every case here by a factor of W on the tower weights.
"""

from __future__ import annotations

import pytest
import torch

from tests import distributed_cases as cases
from tests.conftest import spawn_gloo
from tests.references import (
    brute_force_triplets,
    multi_similarity_keep,
    textbook_clip_loss,
    textbook_contrastive,
    textbook_cross_entropy,
    textbook_in_batch_negatives,
    textbook_logistic,
    textbook_multi_similarity,
    textbook_npair,
    textbook_nt_xent,
    textbook_siglip_loss,
    textbook_sinkhorn,
    textbook_supcon,
    textbook_swav,
    textbook_triplet,
)

REFERENCES = {
    "clip_local": lambda o, b: textbook_clip_loss(o[0], o[1], o[2]),
    "clip_global": lambda o, b: textbook_clip_loss(o[0], o[1], o[2]),
    "clip_tiled_local": lambda o, b: textbook_clip_loss(o[0], o[1], o[2]),
    "clip_tiled_global": lambda o, b: textbook_clip_loss(o[0], o[1], o[2]),
    "clip_auto": lambda o, b: textbook_clip_loss(o[0], o[1], o[2]),
    "siglip": lambda o, b: textbook_siglip_loss(o[0], o[1], o[2], o[3]),
    "nt_xent": lambda o, b: textbook_nt_xent(o[0], o[1], 0.5),
    "supcon": lambda o, b: textbook_supcon(
        torch.cat([o[0], o[1]]), torch.cat([b["labels"], b["labels"]]), 0.2
    ),
    "contrastive": lambda o, b: textbook_contrastive(*two_views(o, b), 0.1, 1.2),
    "triplet_semi_hard": lambda o, b: textbook_triplet(
        two_views(o, b)[0],
        brute_force_triplets(two_views(o, b)[0].detach(), two_views(o, b)[1], "semi_hard", 0.5),
        0.5,
    ),
    "npair": lambda o, b: textbook_npair(o[0], o[1], 0.02),
    "logistic": lambda o, b: textbook_logistic(*two_views(o, b), o[2], -1.0),
    "multi_similarity": lambda o, b: mined_multi_similarity_reference(*two_views(o, b)),
    "pairs": lambda o, b: textbook_in_batch_negatives(o[0], o[1], None, 0.3),
    "pairs_symmetric": lambda o, b: textbook_in_batch_negatives(o[0], o[1], None, 0.3, True),
    "pairs_negatives": lambda o, b: textbook_in_batch_negatives(
        o[0], o[1], cases.hard_negatives({"img": o[0], "txt": o[1]}), 0.3, True
    ),
    "swav": lambda o, b: swav_reference(o[0] @ cases.head().T, o[1] @ cases.head().T),
    "classify": lambda o, b: textbook_cross_entropy(
        o[2] * two_views(o, b)[0] @ cases.head().T, two_views(o, b)[1]
    ),
}


def swav_reference(scores_a, scores_b):
    """SwAV on the whole batch: the paper's Sinkhorn and its loop over crops and samples."""
    codes = {
        0: textbook_sinkhorn(scores_a.detach(), 0.5, 3),
        1: textbook_sinkhorn(scores_b.detach(), 0.5, 3),
    }
    return textbook_swav([scores_a, scores_b], codes, 0.2)


def two_views(o, b):
    return torch.cat([o[0], o[1]]), torch.cat([b["labels"], b["labels"]])


def mined_multi_similarity_reference(emb, labels):
    """Multi-similarity mining by its definition, on the whole batch, then the loss."""
    keep = multi_similarity_keep(emb, labels)
    return textbook_multi_similarity(emb, labels, 2.0, 50.0, 0.5, keep=keep)


def single_process_reference(loss_name: str) -> tuple[torch.Tensor, dict]:
    model = cases.towers_for(loss_name)
    batch = cases.global_batch()
    out = model(images=batch["images"], input_ids=batch["input_ids"])
    outputs = [out.get(k) for k in ("img_emb", "txt_emb", "logit_scale", "logit_bias")]
    loss = REFERENCES[loss_name](outputs, batch)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


@pytest.fixture(scope="module", params=[2, 4], ids=["world2", "world4"])
def distributed_results(request, tmp_path_factory):
    world = request.param
    tmp = tmp_path_factory.mktemp(f"world{world}")
    out = tmp / "results.pt"
    spawn_gloo(cases.worker, world, tmp, str(out))
    return world, torch.load(out)


@pytest.mark.parametrize(
    "case, loss_name, steps, uneven", cases.CASES, ids=[c[0] for c in cases.CASES]
)
def test_matches_single_process(distributed_results, case, loss_name, steps, uneven):
    world, results = distributed_results
    got = results[case]
    want_loss, want_grads = single_process_reference(loss_name)
    assert got["ranks_agree"], "DDP left different gradients on different ranks"
    torch.testing.assert_close(got["loss"], want_loss, rtol=1e-10, atol=1e-12)
    assert set(got["grads"]) == set(want_grads)
    for name, want in want_grads.items():
        torch.testing.assert_close(got["grads"][name], want, rtol=1e-9, atol=1e-12, msg=name)


def test_a_local_only_gather_would_fail():
    """The comparison is sharp enough to see the 1/world_size bug: halving the tower gradients
    (what a gather without gradient gives under DDP averaging with W=2) breaks the tolerance."""
    _, grads = single_process_reference("clip_local")
    with pytest.raises(AssertionError):
        torch.testing.assert_close(
            grads["img.0.weight"] / 2, grads["img.0.weight"], rtol=1e-9, atol=1e-12
        )
