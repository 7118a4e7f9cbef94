"""SwAV's Sinkhorn-Knopp codes and swapped-prediction loss (losses/swav.py) against the paper's
pseudocode written out here in float64: the codes equal it, their sums are the constraints, bf16
and huge scores do not overflow; the loss equals a loop over crops and samples. The 2- and
4-process equality with one process is in test_distributed_losses.py (case ``swav``)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tests.references import textbook_sinkhorn, textbook_swav
from vlcontrast.losses.swav import sinkhorn, swapped_prediction_loss


def unit_scores(b: int, k: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(b, 16, generator=gen, dtype=torch.float64), dim=1)
    protos = F.normalize(torch.randn(k, 16, generator=gen, dtype=torch.float64), dim=1)
    return z @ protos.T  # (B, K) cosines


def test_the_codes_equal_the_papers_algorithm_and_meet_the_constraints():
    scores = unit_scores(24, 10)
    codes = sinkhorn(scores, eps=0.05, iters=3)
    torch.testing.assert_close(codes, textbook_sinkhorn(scores, 0.05, 3), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(codes.sum(dim=1), torch.ones(24, dtype=torch.float64))
    converged = sinkhorn(scores, eps=0.05, iters=200)
    # each prototype holds B/K of the mass once the iterations converge
    torch.testing.assert_close(converged.sum(dim=0), torch.full((10,), 2.4, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_and_huge_scores_do_not_overflow(dtype):
    scores = unit_scores(32, 8, seed=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        codes = sinkhorn(scores.to(dtype), eps=0.05, iters=3)
    assert codes.dtype == dtype and torch.isfinite(codes.float()).all()
    want = textbook_sinkhorn(scores.to(dtype).double(), 0.05, 3)
    torch.testing.assert_close(codes.double(), want, rtol=1e-2, atol=1e-2)
    huge = scores * 400  # exp(400 * 20): infinite in any precision without the shift
    assert not torch.isfinite(torch.exp(huge / 0.05)).all()
    shifted = sinkhorn(huge, eps=0.05, iters=3)
    assert torch.isfinite(shifted).all()
    torch.testing.assert_close(shifted.sum(dim=1), torch.ones(32, dtype=torch.float64))


def test_the_swapped_prediction_loss_is_the_papers_loop():
    gen = torch.Generator().manual_seed(3)
    scores = [torch.randn(6, 5, generator=gen, dtype=torch.float64) for _ in range(4)]  # 2+2
    codes = {0: sinkhorn(scores[0]), 1: sinkhorn(scores[1])}
    got = swapped_prediction_loss(scores, codes, temperature=0.1)
    want = textbook_swav(scores, codes, 0.1)
    torch.testing.assert_close(got.double(), want.float().double(), rtol=1e-5, atol=1e-6)
    uniform = {0: torch.full((6, 5), 0.2)}
    flat = [torch.zeros(6, 5), torch.zeros(6, 5)]
    assert float(swapped_prediction_loss(flat, uniform)) == pytest.approx(math.log(5))
