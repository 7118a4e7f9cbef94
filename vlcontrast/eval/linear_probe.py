"""Linear probe: multinomial logistic regression on frozen embeddings.

The protocol of the CLIP paper (appendix A.3): fit an L2-regularised logistic regression on the
training set's embeddings, choose the penalty on a held-out validation split, refit on the whole
training set and report test accuracy. The objective is

    mean cross-entropy(x W + b, y) + weight_decay / 2 * ||W||^2

(sklearn's ``C`` is ``1 / (weight_decay * N)``), minimised to convergence with full-batch L-BFGS:
it is strictly convex for weight_decay > 0, so the solution does not depend on the optimiser.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def logistic_objective(x, y, weight, bias, weight_decay: float) -> torch.Tensor:
    logits = x @ weight + bias  # (N, C)
    return F.cross_entropy(logits, y) + 0.5 * weight_decay * weight.square().sum()


def fit_logistic(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decay: float, max_iter: int = 1000
) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise :func:`logistic_objective`; returns ``weight`` (D, C) and ``bias`` (C,)."""
    x = x.float()
    weight = torch.zeros(x.shape[1], num_classes, requires_grad=True)
    bias = torch.zeros(num_classes, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=1e-7,
        tolerance_change=1e-12,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = logistic_objective(x, y, weight, bias, weight_decay)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return weight.detach(), bias.detach()


def validation_split(n: int, fraction: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(fit, val) index tensors from a seeded permutation; at least one sample on each side."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = min(n - 1, max(1, round(n * fraction)))
    return perm[n_val:], perm[:n_val]


def sweep_curve(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    num_classes: int,
    weight_decays: Sequence[float],
    val_fraction: float = 0.2,
    seed: int = 0,
) -> dict[float, float]:
    """``{weight_decay: validation accuracy}``: each penalty fitted on the training split of
    :func:`validation_split` and scored on its validation split. Each penalty is fitted alone,
    so ranks can sweep shares of the list (``eval/probes.py``)."""
    fit, val = validation_split(len(train_y), val_fraction, seed)
    curve = {}
    for weight_decay in sorted(weight_decays):
        weight, bias = fit_logistic(train_x[fit], train_y[fit], num_classes, weight_decay)
        preds = (train_x[val].float() @ weight + bias).argmax(dim=-1)  # (V,)
        curve[weight_decay] = (preds == train_y[val]).float().mean().item()
    return curve


def refit_best(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    num_classes: int,
    curve: dict[float, float],
) -> dict:
    """Refit the best penalty of ``curve`` on the whole training set and score ``test_x``.
    Ties in validation accuracy go to the stronger penalty."""
    curve = dict(sorted(curve.items()))
    best = max(sorted(curve, reverse=True), key=curve.__getitem__)
    weight, bias = fit_logistic(train_x, train_y, num_classes, best)
    return {
        "logits": test_x.float() @ weight + bias,  # (N_test, C)
        "weight_decay": best,
        "val_accuracy": curve,
    }


def linear_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    num_classes: int,
    weight_decays: Sequence[float],
    val_fraction: float = 0.2,
    seed: int = 0,
) -> dict:
    """Sweep ``weight_decays`` on a validation split of the training set, refit the best one on
    all of it and score ``test_x``. Ties in validation accuracy go to the stronger penalty.

    Returns ``logits`` (N_test, C), the chosen ``weight_decay`` and the validation curve.
    """
    curve = sweep_curve(train_x, train_y, num_classes, weight_decays, val_fraction, seed)
    return refit_best(train_x, train_y, test_x, num_classes, curve)
