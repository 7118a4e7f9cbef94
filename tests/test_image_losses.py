"""SigLIP, NT-Xent and SupCon against closed forms and textbook references (values, gradients)."""

import math

import pytest
import torch
import torch.nn.functional as F

from tests.references import textbook_nt_xent, textbook_siglip_loss, textbook_supcon
from vlcontrast.losses import nt_xent_loss, siglip_loss, supcon_loss


def unit(*shape, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=gen, dtype=dtype), dim=-1)


def assert_same_value_and_grads(fn, ref, inputs, tol):
    leaves = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    diff = [t for t in leaves if t.requires_grad]
    got = fn(*leaves)
    got_grads = torch.autograd.grad(got, diff)
    want = ref(*leaves)
    want_grads = torch.autograd.grad(want, diff)
    torch.testing.assert_close(got, want, rtol=tol, atol=tol * 1e-2)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=tol, atol=tol * 1e-2)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-5), (torch.float32, 1e-4)])
def test_siglip_matches_textbook(dtype, tol):
    inputs = [
        unit(9, 8, dtype=dtype, seed=1),
        unit(9, 8, dtype=dtype, seed=2),
        torch.tensor(10.0, dtype=dtype),
        torch.tensor(-10.0, dtype=dtype),
    ]
    assert_same_value_and_grads(siglip_loss, textbook_siglip_loss, inputs, tol)


@pytest.mark.parametrize("n, s, b", [(4, 10.0, -10.0), (16, 3.0, 1.0)])
def test_siglip_aligned_orthonormal_pairs(n, s, b):
    """Positives score s + b, negatives (cosine 0) score b."""
    emb = torch.eye(n, dtype=torch.float64)
    loss = siglip_loss(
        emb, emb, torch.tensor(s, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    )
    expected = math.log1p(math.exp(-(s + b))) + (n - 1) * math.log1p(math.exp(b))
    assert loss.item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("n", [1, 3, 16])
def test_nt_xent_identical_embeddings_give_log_2n_minus_1(n):
    emb = unit(1, 8).expand(n, 8)
    assert nt_xent_loss(emb, emb, 0.5).item() == pytest.approx(math.log(2 * n - 1), rel=1e-12)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-5), (torch.float32, 1e-4)])
def test_nt_xent_matches_textbook(dtype, tol):
    inputs = [unit(7, 8, dtype=dtype, seed=3), unit(7, 8, dtype=dtype, seed=4)]
    assert_same_value_and_grads(
        lambda a, b: nt_xent_loss(a, b, 0.2), lambda a, b: textbook_nt_xent(a, b, 0.2), inputs, tol
    )


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-5), (torch.float32, 1e-4)])
def test_supcon_matches_textbook(dtype, tol):
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 3, 2, 2, 5])  # label 5 has no positive: left out
    inputs = [unit(10, 8, dtype=dtype, seed=5), labels]
    assert_same_value_and_grads(
        lambda e, y: supcon_loss(e, y, 0.1), lambda e, y: textbook_supcon(e, y, 0.1), inputs, tol
    )


def test_supcon_with_pair_labels_is_nt_xent():
    a, b = unit(6, 8, seed=6), unit(6, 8, seed=7)
    pairs = torch.arange(6)
    torch.testing.assert_close(
        supcon_loss(torch.cat([a, b]), torch.cat([pairs, pairs]), 0.3), nt_xent_loss(a, b, 0.3)
    )


def test_supcon_without_positives_is_refused():
    with pytest.raises(ValueError, match="no anchor has a positive"):
        supcon_loss(unit(4, 3), torch.arange(4), 0.1)
