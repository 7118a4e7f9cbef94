#!/usr/bin/env python
"""Our metric-learning losses and miners against pytorch-metric-learning's, a library nobody
here wrote, on the same random float64 batch: loss and gradient, and the mined sets. The tests
check each loss against its paper; this checks that a pytorch-metric-learning user who switches
gets the same numbers, once its conventions are set to ours (stated in each row).

    pip install --no-deps pytorch-metric-learning     # its losses need nothing beyond torch
    python benchmarks/against_pml.py

Exits 1 if a loss or gradient differs by more than 1e-9 or a mined set differs.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from vlcontrast.losses import metric, miners, supcon

TOLERANCE = 1e-9


def compare(name, ours_fn, theirs_fn, emb: torch.Tensor) -> tuple[str, float, float]:
    """(name, |loss difference|, largest |gradient difference|) on the embeddings ``emb``."""
    ours_in, theirs_in = emb.clone().requires_grad_(True), emb.clone().requires_grad_(True)
    ours, theirs = ours_fn(ours_in), theirs_fn(theirs_in)
    ours.backward()
    theirs.backward()
    gap = (ours_in.grad - theirs_in.grad).abs().max().item()
    return name, abs(ours.item() - theirs.item()), gap


def main() -> int:
    try:
        import pytorch_metric_learning
        from pytorch_metric_learning import distances, losses, reducers
        from pytorch_metric_learning import miners as pml_miners
    except ImportError:
        print(
            "pytorch-metric-learning is not installed: "
            "pip install --no-deps pytorch-metric-learning",
            file=sys.stderr,
        )
        return 2

    torch.manual_seed(0)
    classes, per_class, d = 8, 4, 16  # a class-balanced batch: every anchor has positives
    labels = torch.arange(classes).repeat_interleave(per_class)
    emb = torch.randn(classes * per_class, d, dtype=torch.float64)
    unit = F.normalize(emb, dim=1)  # pytorch-metric-learning normalises by default
    mean = reducers.MeanReducer()  # its default averages only the non-zero terms
    euclid = distances.LpDistance(normalize_embeddings=True)
    rows = []

    rows.append(
        compare(
            "contrastive, margins 0 / 1, power 1",
            lambda x: metric.contrastive_loss(F.normalize(x, dim=1), labels, 0.0, 1.0, power=1),
            lambda x: losses.ContrastiveLoss(0.0, 1.0, distance=euclid, reducer=mean)(x, labels),
            emb,
        )
    )
    rows.append(
        compare(
            "triplet, margin 0.2, all triplets",
            lambda x: metric.triplet_loss(F.normalize(x, dim=1), labels, margin=0.2),
            lambda x: losses.TripletMarginLoss(0.2, distance=euclid, reducer=mean)(x, labels),
            emb,
        )
    )
    rows.append(
        compare(
            "triplet, margin 0.2, swap",
            lambda x: metric.triplet_loss(F.normalize(x, dim=1), labels, margin=0.2, swap=True),
            lambda x: losses.TripletMarginLoss(0.2, swap=True, distance=euclid, reducer=mean)(
                x, labels
            ),
            emb,
        )
    )
    rows.append(
        compare(
            "multi-similarity 2 / 50 / 0.5",
            lambda x: metric.multi_similarity_loss(x, labels, alpha=2, beta=50, base=0.5),
            lambda x: losses.MultiSimilarityLoss(alpha=2, beta=50, base=0.5, reducer=mean)(
                x, labels
            ),
            emb,
        )
    )
    rows.append(
        compare(
            "SupCon, T 0.1",
            lambda x: supcon.supcon_loss(F.normalize(x, dim=1), labels, 0.1),
            lambda x: losses.SupConLoss(temperature=0.1, reducer=mean)(x, labels),
            emb,
        )
    )

    # miners: the same triplets / pairs, compared as sets
    g = metric.gather(unit, labels)
    dist = metric.distances(unit, unit)
    ours_semi = set(
        zip(
            *(t.tolist() for t in miners.semi_hard_triplets(dist, g.positive, g.negative, 0.2)),
            strict=True,
        )
    )
    theirs = pml_miners.TripletMarginMiner(0.2, type_of_triplets="semihard", distance=euclid)
    theirs_semi = set(zip(*(t.tolist() for t in theirs(emb, labels)), strict=True))
    mined = [("semi-hard triplets, margin 0.2", ours_semi, theirs_semi)]
    ours_hard = set(
        zip(*(t.tolist() for t in miners.hard_triplets(dist, g.positive, g.negative)), strict=True)
    )
    theirs = pml_miners.TripletMarginMiner(0.0, type_of_triplets="hard", distance=euclid)
    mined.append(
        (
            "hard triplets",
            ours_hard,
            set(zip(*(t.tolist() for t in theirs(emb, labels)), strict=True)),
        )
    )
    keep = miners.multi_similarity_pairs(unit @ unit.T, g.positive, g.negative, 0.1)
    a1, p, a2, n = pml_miners.MultiSimilarityMiner(epsilon=0.1)(emb, labels)
    theirs_pairs = set(zip(a1.tolist(), p.tolist(), strict=True)) | set(
        zip(a2.tolist(), n.tolist(), strict=True)
    )
    ours_pairs = set(zip(*(t.tolist() for t in keep.nonzero(as_tuple=True)), strict=True))
    mined.append(("multi-similarity pairs, eps 0.1", ours_pairs, theirs_pairs))

    print(
        f"vlcontrast vs pytorch-metric-learning {pytorch_metric_learning.__version__}, float64, "
        f"{classes} classes x {per_class}, unit-norm embeddings, its MeanReducer"
    )
    print(f"{'loss':<36} | {'|loss diff|':>11} | {'max |grad diff|':>15}")
    worst = 0.0
    for name, loss_diff, grad_diff in rows:
        print(f"{name:<36} | {loss_diff:11.2e} | {grad_diff:15.2e}")
        worst = max(worst, loss_diff, grad_diff)
    same = True
    print(f"\n{'miner':<36} | {'ours':>6} | {'theirs':>6} | same set")
    for name, ours, theirs in mined:
        print(f"{name:<36} | {len(ours):6d} | {len(theirs):6d} | {ours == theirs}")
        same &= ours == theirs
    print(f"\nlargest difference {worst:.2e}; every mined set the same: {same}")
    # the convention set above, made visible: its default reducer averages the non-zero terms
    ours = metric.triplet_loss(unit, labels, margin=0.2).item()
    default = losses.TripletMarginLoss(0.2, distance=euclid)(emb, labels).item()
    print(
        f"(the triplet loss with its default AvgNonZeroReducer: {default:.4f}, against {ours:.4f} "
        "as the mean over all triplets, ours and its MeanReducer)"
    )
    return 0 if worst <= TOLERANCE and same else 1


if __name__ == "__main__":
    sys.exit(main())
