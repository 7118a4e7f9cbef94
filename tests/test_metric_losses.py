"""Metric-learning losses and miners (losses/metric.py, losses/miners.py): each loss against a
loop written from its paper (tests/references.py), values and gradients in float64; each miner
against enumeration by FaceNet's definitions. Their 2- and 4-process equality with one process
(mining on the gathered batch) is in test_distributed_losses.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.references import (
    brute_force_triplets,
    multi_similarity_keep,
    textbook_contrastive,
    textbook_logistic,
    textbook_multi_similarity,
    textbook_npair,
    textbook_triplet,
)
from vlcontrast.losses import metric, miners

LABELS = torch.tensor([0, 1, 2, 0, 1, 2, 3, 0, 3, 1])


def embeddings(seed=0, n=10, d=4, unit=True):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    x = F.normalize(x, dim=-1) if unit else x
    return x.requires_grad_()


def assert_same_value_and_gradient(ours, reference, inputs):
    """``ours`` and ``reference`` are functions of ``inputs``: equal values and gradients."""
    got = ours(*inputs)
    got_grads = torch.autograd.grad(got, inputs)
    want = reference(*inputs)
    want_grads = torch.autograd.grad(want, inputs)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("power", [1, 2])
@pytest.mark.parametrize(
    "distance, pos_margin, neg_margin", [("euclidean", 0.1, 1.2), ("cosine", 0.05, 0.6)]
)
def test_contrastive_loss_is_hadsells_with_two_margins(power, distance, pos_margin, neg_margin):
    assert_same_value_and_gradient(
        lambda e: metric.contrastive_loss(e, LABELS, pos_margin, neg_margin, distance, power),
        lambda e: textbook_contrastive(e, LABELS, pos_margin, neg_margin, power, distance),
        (embeddings(),),
    )


@pytest.mark.parametrize("swap, soft", [(False, False), (True, False), (False, True)])
def test_triplet_loss_over_every_triplet_is_the_formula(swap, soft):
    all_triplets = brute_force_triplets(embeddings().detach(), LABELS, "all")
    assert_same_value_and_gradient(
        lambda e: metric.triplet_loss(e, LABELS, margin=0.3, swap=swap, soft=soft),
        lambda e: textbook_triplet(e, all_triplets, 0.3, swap=swap, soft=soft),
        (embeddings(),),
    )


@pytest.mark.parametrize("kind", ["semi_hard", "hard", "batch_hard", "all"])
@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_each_miner_finds_the_brute_force_set(kind, distance):
    emb = embeddings(seed=3, n=12).detach()
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1, 2, 3, 3, 0])
    g = metric.gather(emb, labels)
    d = metric.distances(emb, emb, distance)
    mined = {
        "semi_hard": lambda: miners.semi_hard_triplets(d, g.positive, g.negative, 0.5),
        "hard": lambda: miners.hard_triplets(d, g.positive, g.negative),
        "batch_hard": lambda: miners.batch_hard_triplets(d, g.positive, g.negative),
        "all": lambda: miners.all_triplets(g.positive, g.negative),
    }[kind]()
    got = sorted(zip(*(t.tolist() for t in mined), strict=True))
    want = sorted(brute_force_triplets(emb, labels, kind, margin=0.5, distance=distance))
    assert got == want and len(want) > 0


def test_hard_and_semi_hard_are_disjoint_and_easy_triplets_cost_nothing():
    """One convention: hard (d_an < d_ap), semi-hard (d_ap < d_an < d_ap + m) and easy (the
    rest) split the triplets; the loss on the easy ones is zero."""
    emb = embeddings(seed=5).detach()
    g = metric.gather(emb, LABELS)
    d = metric.distances(emb, emb)
    every = set(
        zip(*(t.tolist() for t in miners.all_triplets(g.positive, g.negative)), strict=True)
    )
    hard = set(
        zip(*(t.tolist() for t in miners.hard_triplets(d, g.positive, g.negative)), strict=True)
    )
    semi = set(
        zip(
            *(t.tolist() for t in miners.semi_hard_triplets(d, g.positive, g.negative, 0.2)),
            strict=True,
        )
    )
    assert hard and semi and not hard & semi
    easy = every - hard - semi
    ties = {t for t in easy if d[t[0], t[1]] == d[t[0], t[2]]}
    easy -= ties
    a, p, n = (torch.tensor(x) for x in zip(*sorted(easy), strict=True))
    assert float(metric.triplet_loss(emb, LABELS, (a, p, n), margin=0.2)) == 0.0


def test_semi_hard_mining_then_the_triplet_loss_is_facenets():
    emb = embeddings(seed=1)
    triplets = brute_force_triplets(emb.detach(), LABELS, "semi_hard", margin=0.4)

    def ours(e):
        g = metric.gather(e, LABELS)
        mined = miners.semi_hard_triplets(
            metric.distances(e, e).detach(), g.positive, g.negative, 0.4
        )
        return metric.triplet_loss(e, LABELS, mined, margin=0.4)

    assert_same_value_and_gradient(ours, lambda e: textbook_triplet(e, triplets, 0.4), (emb,))


def test_npair_loss_is_sohns_with_the_l2_regulariser():
    assert_same_value_and_gradient(
        lambda a, p: metric.npair_loss(a, p, l2_reg=0.02),
        lambda a, p: textbook_npair(a, p, 0.02),
        (embeddings(seed=2, n=6, unit=False), embeddings(seed=3, n=6, unit=False)),
    )


def test_logistic_loss_is_binary_cross_entropy_on_every_pair():
    scale = torch.tensor(4.0, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-1.5, dtype=torch.float64, requires_grad=True)
    assert_same_value_and_gradient(
        lambda e, s, b: metric.logistic_loss(e, LABELS, s, b),
        lambda e, s, b: textbook_logistic(e, LABELS, s, b),
        (embeddings(unit=False), scale, bias),
    )


def test_multi_similarity_loss_and_mining_are_the_papers():
    emb = embeddings(seed=4)
    assert_same_value_and_gradient(
        lambda e: metric.multi_similarity_loss(e, LABELS),
        lambda e: textbook_multi_similarity(e, LABELS, 2.0, 50.0, 0.5),
        (emb,),
    )
    # mining (eq. 3-4): negatives above the hardest positive - eps, positives below the
    # hardest negative + eps, enumerated by hand
    unit = F.normalize(emb.detach(), dim=-1)
    sim = unit @ unit.T
    n = len(LABELS)
    keep = multi_similarity_keep(emb, LABELS)

    g = metric.gather(emb.detach(), LABELS)
    mask = miners.multi_similarity_pairs(sim, g.positive, g.negative, 0.1)
    want = torch.tensor([[j != i and keep(i, j) for j in range(n)] for i in range(n)])
    assert torch.equal(mask, want) and 0 < int(mask.sum()) < n * (n - 1)
    assert_same_value_and_gradient(
        lambda e: metric.multi_similarity_loss(e, LABELS, pairs=mask),
        lambda e: textbook_multi_similarity(
            e, LABELS, 2.0, 50.0, 0.5, keep=lambda i, j: bool(mask[i, j])
        ),
        (emb,),
    )


def test_a_batch_without_any_positive_is_an_error_not_a_silent_zero():
    with pytest.raises(ValueError, match="triplet_loss"):
        metric.triplet_loss(embeddings(n=4), torch.arange(4))
