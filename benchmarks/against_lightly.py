#!/usr/bin/env python
"""Our self-supervised losses against lightly's, a library nobody here wrote, on the same random
inputs: loss and gradient, float64, one process. The tests check each loss against its paper's
pseudocode; this checks that a lightly user who switches gets the same numbers.

    pip install --no-deps lightly      # its losses need nothing beyond torch
    python benchmarks/against_lightly.py

Pairs compared (ours | lightly): SwAV's Sinkhorn codes and swapped-prediction loss (2 global +
4 local crops) | ``sinkhorn``, ``SwaVLoss``; DINO's loss and centre update (2 global + 4 local
crops) | ``DINOLoss``; NT-Xent (SimCLR) | ``NTXentLoss``; BYOL's regression loss |
``NegativeCosineSimilarity`` (ours is ``2 - 2 cos``, theirs ``-cos``: compared as such);
Barlow Twins | ``BarlowTwinsLoss``; MoCo v2's queue loss | ``NTXentLoss`` with a memory bank
holding our queue; DenseCL's correspondence and dense loss | ``select_most_similar`` (as
lightly's DenseCL example) and the memory-bank ``NTXentLoss`` over the locations. Prints
each pair's largest absolute difference of loss and of gradient (the correspondence: how many
matches differ), and exits 1 if one is over 1e-9.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from vlcontrast.losses import densecl, dino, ssl, supcon, swav

TOLERANCE = 1e-9


def compare(name: str, ours_fn, theirs_fn, *inputs: torch.Tensor) -> tuple[str, float, float]:
    """(name, |loss difference|, largest |gradient difference|) of the two functions."""
    ours_in = [x.clone().requires_grad_(True) for x in inputs]
    theirs_in = [x.clone().requires_grad_(True) for x in inputs]
    ours, theirs = ours_fn(*ours_in), theirs_fn(*theirs_in)
    ours.backward()
    theirs.backward()
    grads = [gap(a.grad, b.grad) for a, b in zip(ours_in, theirs_in, strict=True)]
    return name, abs(ours.item() - theirs.item()), max(grads)


def gap(a: torch.Tensor | None, b: torch.Tensor | None) -> float:
    """Largest |a - b|; 0 when neither input gets a gradient (a target), inf when one does."""
    if a is None or b is None:
        return 0.0 if a is None and b is None else float("inf")
    return (a - b).abs().max().item()


def main() -> int:
    try:
        from lightly.loss import (
            BarlowTwinsLoss,
            DINOLoss,
            NegativeCosineSimilarity,
            NTXentLoss,
            SwaVLoss,
        )
        from lightly.loss.swav_loss import sinkhorn as lightly_sinkhorn
        from lightly.models.utils import most_similar_index, select_most_similar
    except ImportError:
        print("lightly is not installed: pip install --no-deps lightly", file=sys.stderr)
        return 2
    import lightly

    torch.manual_seed(0)
    b, k, d = 32, 64, 16
    rows = []

    # SwAV: codes, then the loss with both the codes and the scores of 6 crops
    crops = [F.normalize(torch.randn(b, k, dtype=torch.float64), dim=1) for _ in range(6)]
    codes_ours = swav.sinkhorn(crops[0], eps=0.05, iters=3)
    codes_theirs = lightly_sinkhorn(crops[0], iterations=3, epsilon=0.05)
    rows.append(("SwAV Sinkhorn codes", (codes_ours - codes_theirs).abs().max().item(), 0.0))

    def swav_ours(*scores):
        codes = {i: swav.sinkhorn(scores[i]) for i in (0, 1)}
        return swav.swapped_prediction_loss(list(scores), codes, temperature=0.1)

    def swav_theirs(*scores):
        return SwaVLoss(temperature=0.1)(list(scores[:2]), list(scores[2:]))

    rows.append(compare("SwAV loss, 2 + 4 crops", swav_ours, swav_theirs, *crops))

    # DINO: student on 6 crops, teacher on the 2 global ones, a non-zero centre
    student = torch.randn(6, b, k, dtype=torch.float64)
    teacher = torch.randn(2, b, k, dtype=torch.float64)
    center = 0.1 * torch.randn(k, dtype=torch.float64)
    theirs_loss = DINOLoss(output_dim=k, teacher_temp=0.04, student_temp=0.1).double()
    theirs_loss.center.copy_(center[None])

    def dino_ours(s):
        return dino.dino_loss(s.transpose(0, 1), teacher.transpose(0, 1), center, 0.1, 0.04)

    def dino_theirs(s):
        return theirs_loss(list(teacher), list(s), teacher_temp=0.04)

    rows.append(compare("DINO loss, 2 + 4 crops", dino_ours, dino_theirs, student))
    # lightly updated its centre in the forward (twice: once per compare call's forward)
    centre = DINOLoss(output_dim=k, center_momentum=0.9).double()
    centre.center.copy_(center[None])
    centre.update_center(teacher)
    ours_centre = dino.center_update(center, teacher.transpose(0, 1), 0.9)
    rows.append(("DINO centre update", (ours_centre - centre.center[0]).abs().max().item(), 0.0))

    # SimCLR's NT-Xent, BYOL's regression, Barlow Twins
    a, z = torch.randn(b, d, dtype=torch.float64), torch.randn(b, d, dtype=torch.float64)

    def ntxent_ours(x, y):
        return supcon.nt_xent_loss(F.normalize(x, dim=1), F.normalize(y, dim=1), 0.5)

    rows.append(compare("NT-Xent (SimCLR)", ntxent_ours, NTXentLoss(temperature=0.5), a, z))

    def byol_ours(p, t):  # 2 - 2 cos -> -cos
        return (ssl.regression_loss(F.normalize(p, dim=1), F.normalize(t, dim=1)) - 2) / 2

    def byol_theirs(p, t):  # lightly's target carries no gradient either
        return NegativeCosineSimilarity()(p, t.detach())

    rows.append(compare("BYOL regression (as -cos)", byol_ours, byol_theirs, a, z))
    rows.append(
        compare(
            "Barlow Twins",
            lambda x, y: ssl.barlow_twins_loss(x, y, 5e-3),
            BarlowTwinsLoss(lambda_param=5e-3),
            a,
            z,
        )
    )

    # MoCo v2 and DenseCL: lightly's memory-bank NT-Xent with its bank set to our queue (K, D);
    # the key carries no gradient in either (MoCo's keys come from the momentum encoder)
    queue = F.normalize(torch.randn(k, d, dtype=torch.float64), dim=1)

    def bank_loss(q, key):
        loss = NTXentLoss(temperature=0.2, memory_bank_size=(k, d)).double()
        loss.memory_bank.bank.copy_(queue)
        return loss(q, key.detach())

    def moco_ours(q, key):
        key = F.normalize(key, dim=1).detach()  # as the objective passes it
        return ssl.moco_queue_loss(F.normalize(q, dim=1), key, queue, 0.2)

    rows.append(compare("MoCo v2 queue loss", moco_ours, bank_loss, a, z))

    # DenseCL on a 4 x 4 map: backbone features (B, N, F) pick each query location's key
    # location; dense projections (B, N, D) are contrasted with it against the queue
    q_feat, k_feat = torch.randn(2, 8, 16, 24, dtype=torch.float64)
    q_grid, k_grid = torch.randn(2, 8, 16, d, dtype=torch.float64)
    index = densecl.dense_correspondence(q_feat, k_feat)
    moved = (index != most_similar_index(q_feat, k_feat)).sum().item()
    rows.append((f"DenseCL matches ({index.numel()})", float(moved), 0.0))

    def densecl_ours(q, key):
        matched = densecl.matched_keys(F.normalize(key, dim=-1), index)
        return densecl.dense_loss(F.normalize(q, dim=-1), matched, queue, 0.2)

    def densecl_theirs(q, key):
        matched = select_most_similar(q_feat, k_feat, key)  # lightly's DenseCL example
        return bank_loss(q.flatten(end_dim=1), matched.flatten(end_dim=1))

    rows.append(compare("DenseCL dense loss", densecl_ours, densecl_theirs, q_grid, k_grid))

    print(f"vlcontrast vs lightly {lightly.__version__}, float64, batch {b}")
    print(f"{'loss':<28} | {'|loss diff|':>11} | {'max |grad diff|':>15}")
    worst = 0.0
    for name, loss_diff, grad_diff in rows:
        print(f"{name:<28} | {loss_diff:11.2e} | {grad_diff:15.2e}")
        worst = max(worst, loss_diff, grad_diff)
    print(f"largest difference {worst:.2e} ({'within' if worst <= TOLERANCE else 'over'} 1e-9)")
    return 0 if worst <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
