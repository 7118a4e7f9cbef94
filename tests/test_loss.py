"""CLIP loss against closed forms and a textbook implementation written here (values and grads)."""

import math

import pytest
import torch
import torch.nn.functional as F

from tests.references import textbook_clip_loss
from vlcontrast.losses.clip import clip_loss


def unit(*shape, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=gen, dtype=dtype), dim=-1)


@pytest.mark.parametrize("n", [1, 2, 7, 32])
def test_identical_embeddings_give_log_n(n):
    emb = unit(1, 8).expand(n, 8)
    loss = clip_loss(emb, emb, torch.tensor(10.0, dtype=torch.float64))
    assert loss.item() == pytest.approx(math.log(n), rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("n, s", [(4, 1.0), (16, 5.0), (64, 14.3), (8, 100.0)])
def test_aligned_orthonormal_pairs(n, s):
    emb = torch.eye(n, dtype=torch.float64)  # orthonormal, image i == text i
    loss = clip_loss(emb, emb, torch.tensor(s, dtype=torch.float64))
    expected = math.log1p((n - 1) * math.exp(-s))
    assert loss.item() == pytest.approx(expected, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_matches_textbook_values_and_gradients(dtype, tol):
    img = unit(12, 16, dtype=dtype, seed=1).requires_grad_()
    txt = unit(12, 16, dtype=dtype, seed=2).requires_grad_()
    scale = torch.tensor(7.5, dtype=dtype, requires_grad=True)
    ours = clip_loss(img, txt, scale)
    grads = torch.autograd.grad(ours, (img, txt, scale))
    ref = textbook_clip_loss(img, txt, scale)
    ref_grads = torch.autograd.grad(ref, (img, txt, scale))
    torch.testing.assert_close(ours, ref, rtol=tol, atol=tol)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)


def test_gradcheck_float64():
    img = unit(5, 6, seed=3).requires_grad_()
    txt = unit(5, 6, seed=4).requires_grad_()
    scale = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(clip_loss, (img, txt, scale))
