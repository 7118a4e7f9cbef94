"""Linear probe: multinomial logistic regression on frozen embeddings.

The protocol of the CLIP paper (appendix A.3): fit an L2-regularised logistic regression on the
training set's embeddings, choose the penalty on a held-out validation split, refit on the whole
training set and report test accuracy. The objective is

    mean cross-entropy(x W + b, y) + weight_decay / 2 * ||W||^2

(sklearn's ``C`` is ``1 / (weight_decay * N)``), minimised to convergence with full-batch L-BFGS:
it is strictly convex for weight_decay > 0, so the solution does not depend on the optimiser.

Under torchrun (``shared=True``) each rank holds only its share of the training embeddings
(ImageNet through a ResNet-50: 1.28M x 2,048 floats, 10 GB, which every rank used to hold whole):
every evaluation of the objective sums each rank's cross-entropy and its gradient and
all-reduces the sums, so every rank sees the same values, takes the same L-BFGS steps and ends
with the same weights: those of the objective over all the samples. The validation split is
drawn over every rank's rows in dataset order (``positions``), the split one process draws.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F

from vlcontrast import distributed


def logistic_objective(x, y, weight, bias, weight_decay: float) -> torch.Tensor:
    logits = x @ weight + bias  # (N, C)
    return F.cross_entropy(logits, y) + 0.5 * weight_decay * weight.square().sum()


# Rows whose logits are held at once: 65,536 x 1,000 classes is 256 MiB of logits (and as much
# again for their softmax and gradient), where the full batch of ImageNet's 1.28M training
# embeddings was 4.8 GiB each (benchmarks/probe_memory.py)
CHUNK_ROWS = 65536


def summed(values: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """``values`` summed over the ranks (through ``device``: NCCL reduces GPU tensors only),
    the same on every rank; ``values`` itself in one process."""
    if distributed.world_size() == 1:
        return values
    return distributed.all_reduce(values.to(device)).cpu()


def fit_logistic(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    weight_decay: float,
    max_iter: int = 1000,
    shared: bool = False,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise :func:`logistic_objective`; returns ``weight`` (D, C) and ``bias`` (C,). With
    ``shared``, ``x`` and ``y`` are this rank's share of the samples and the objective is that
    of every rank's samples together (the module's note); every rank gets the same answer."""
    x = x.float()
    total = len(y)
    if shared:
        total = int(summed(torch.tensor([float(total)], dtype=torch.float64), device).item())
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
        return objective_and_gradient(x, y, weight, bias, weight_decay, total, shared, device)

    with torch.enable_grad():
        optimizer.step(closure)
    return weight.detach(), bias.detach()


def objective_and_gradient(
    x, y, weight, bias, weight_decay: float, total: int, shared=False, device="cpu"
) -> torch.Tensor:
    """:func:`logistic_objective` of ``total`` samples and its gradient, left in
    ``weight.grad`` and ``bias.grad``: the data term summed over this rank's rows
    :data:`CHUNK_ROWS` at a time (and with ``shared`` over every rank's), so no more than a
    chunk's logits exist at once."""
    weight.grad, bias.grad = torch.zeros_like(weight), torch.zeros_like(bias)
    value = torch.zeros(())
    for xs, ys in zip(x.split(CHUNK_ROWS), y.split(CHUNK_ROWS), strict=True):
        data = F.cross_entropy(xs @ weight + bias, ys, reduction="sum") / max(total, 1)
        data.backward()  # adds to the gradients
        value += data.detach()
    if shared:
        flat = summed(torch.cat([value.reshape(1), weight.grad.flatten(), bias.grad]), device)
        value = flat[0]
        weight.grad.copy_(flat[1 : 1 + weight.numel()].view_as(weight))
        bias.grad.copy_(flat[1 + weight.numel() :])
    with torch.no_grad():
        weight.grad.add_(weight, alpha=weight_decay)
        return value + 0.5 * weight_decay * weight.square().sum()


def validation_split(n: int, fraction: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(fit, val) index tensors from a seeded permutation; at least one sample on each side."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = min(n - 1, max(1, round(n * fraction)))
    return perm[n_val:], perm[:n_val]


def validation_rows(
    positions: torch.Tensor, total: int, fraction: float, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(fit, val) indices into this rank's rows, whose places among all ``total`` rows in
    dataset order are ``positions``: :func:`validation_split` of all the rows, whichever rank
    holds each."""
    held = torch.zeros(total, dtype=torch.bool)
    held[validation_split(total, fraction, seed)[1]] = True
    mine = held[positions]  # (rows,) this rank's rows in the validation split
    return (~mine).nonzero().squeeze(1), mine.nonzero().squeeze(1)


def over_penalties(penalties: Sequence[float], progress: bool) -> Iterable[float]:
    """``penalties``, behind a progress bar on the main process when ``progress``: each fit
    can take minutes on a large training set."""
    if not (progress and distributed.is_main()):
        return penalties
    from tqdm.auto import tqdm

    return tqdm(penalties, desc="probe: fit each penalty", unit="fit", leave=False)


def sweep_curve(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    num_classes: int,
    weight_decays: Sequence[float],
    val_fraction: float = 0.2,
    seed: int = 0,
    positions: torch.Tensor | None = None,
    shared: bool = False,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> dict[float, float]:
    """``{weight_decay: validation accuracy}``: each penalty fitted on the training split of
    :func:`validation_split` and scored on its validation split. ``positions``: each row's
    place among all ranks' rows in dataset order (default: the rows are all of them, in
    order); with ``shared``, this rank's rows, fitted and scored with every rank's.
    ``progress``: a bar over the penalties (:func:`over_penalties`)."""
    n = len(train_y)
    if positions is None:
        if shared:
            raise ValueError("sweep_curve: shared rows need their positions in dataset order")
        positions = torch.arange(n)
    if shared:
        n = int(summed(torch.tensor([float(n)], dtype=torch.float64), device).item())
    fit, val = validation_rows(positions, n, val_fraction, seed)
    curve = {}
    penalties = sorted(weight_decays)
    for weight_decay in over_penalties(penalties, progress):
        weight, bias = fit_logistic(
            train_x[fit], train_y[fit], num_classes, weight_decay, shared=shared, device=device
        )
        preds = (train_x[val].float() @ weight + bias).argmax(dim=-1)  # (V,)
        right = torch.tensor([float((preds == train_y[val]).sum()), float(len(val))])
        if shared:
            right = summed(right.double(), device)
        curve[weight_decay] = float(right[0]) / float(right[1]) if right[1] else float("nan")
    return curve


def refit_best(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    num_classes: int,
    curve: dict[float, float],
    shared: bool = False,
    device: torch.device | str = "cpu",
) -> dict:
    """Refit the best penalty of ``curve`` on the whole training set (``shared``: every rank's
    share of it) and score ``test_x``. Ties in validation accuracy go to the stronger
    penalty."""
    curve = dict(sorted(curve.items()))
    best = max(sorted(curve, reverse=True), key=curve.__getitem__)
    weight, bias = fit_logistic(train_x, train_y, num_classes, best, shared=shared, device=device)
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
