"""Gradient caching: a contrastive batch of K micro-batches in the activation memory of one.

Gao et al. 2021 ("Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup"):

1. forward every micro-batch without autograd, keeping only the model outputs (embeddings and
   scalars such as ``logit_scale``) and the RNG state each forward started from;
2. compute the loss on the outputs of the *whole* batch (gathered across ranks as usual) and
   backpropagate to those outputs only: this caches d loss / d output;
3. forward each micro-batch again with autograd, from the RNG state saved in step 1 (so dropout
   and stochastic depth draw the same masks), and backpropagate the cached output gradients.

Every parameter then receives exactly the gradient of the single big batch. Scalar outputs
(``logit_scale``, ``logit_bias``) get their cached gradient once, with the last micro-batch, not
once per micro-batch: accumulating a per-micro-batch loss over cached features instead inflates
the temperature's gradient by K. Under DDP the first K-1 re-forwards run in
``no_sync`` and the last one all-reduces, so every parameter is reduced once per step.
Batch-norm running statistics see each micro-batch twice (once per pass).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from vlcontrast.objectives.base import unwrap


def batch_rows(batch: dict[str, Any]) -> int:
    """The batch size: the length of the first tensor with a batch dimension (view groups:
    the first group's)."""
    rows = _rows_of(batch)
    if rows is None:
        raise ValueError("the batch holds no tensor with a batch dimension")
    return rows


def _rows_of(batch: dict[str, Any]) -> int | None:
    for value in batch.values():
        if isinstance(value, torch.Tensor) and value.ndim:
            return len(value)
        if isinstance(value, dict) and _rows_of(value) is not None:
            return _rows_of(value)
    return None


def split_batch(batch: dict[str, Any], steps: int) -> list[dict[str, Any]]:
    """``min(steps, rows)`` micro-batches: tensors and lists with the batch's length are split
    along dim 0, everything else (counters, metadata) is shared."""
    rows = batch_rows(batch)
    steps = min(steps, rows)
    bounds = [round(k * rows / steps) for k in range(steps + 1)]
    micro = []
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        micro.append(_rows(batch, rows, lo, hi))
    return micro


def _rows(batch: dict[str, Any], rows: int, lo: int, hi: int) -> dict[str, Any]:
    part = {}
    for name, value in batch.items():
        splittable = isinstance(value, (torch.Tensor, list)) and len(value) == rows
        if isinstance(value, dict) and _rows_of(value) == rows:
            part[name] = _rows(value, rows, lo, hi)  # view groups
        else:
            part[name] = value[lo:hi] if splittable and getattr(value, "ndim", 1) else value
    return part


def _rng_state(device: torch.device) -> tuple:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


@contextlib.contextmanager
def _replayed_rng(state: tuple, device: torch.device):
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.set_rng_state(state[0])
        if state[1] is not None:
            torch.cuda.set_rng_state(state[1], device)
        yield


def _device_of(batch: dict[str, Any]) -> torch.device:
    for value in batch.values():
        if isinstance(value, dict) and value:
            return _device_of(value)
        if isinstance(value, torch.Tensor):
            return value.device
    raise ValueError("the batch holds no tensor")


def grad_cached_step(
    task: nn.Module,
    batch: dict[str, Any],
    steps: int,
    *,
    backward: Callable[[torch.Tensor], None] = torch.Tensor.backward,
    check_loss: Callable[[torch.Tensor], None] | None = None,
    forward_loss: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Populate ``.grad`` of the task's parameters (model and heads) on ``batch`` in ``steps``
    micro-batches (``steps=1``: the plain forward and backward). ``task`` is the objective, bare
    or DDP-wrapped: outputs come from calling it, the loss from its bare ``loss``.

    ``backward`` runs the loss's backward (``accelerator.backward`` applies fp16 loss scaling);
    ``check_loss`` may raise before any parameter gradient is written; ``forward_loss`` replaces
    the plain step's forward and loss with one function (``train.compile``: compiled as one
    graph). Returns the objective's ``{"loss", "metrics"}`` for the whole batch.
    """
    objective = unwrap(task)
    if steps == 1 or batch_rows(batch) == 1:  # the plain step: one forward, one backward
        out = forward_loss(batch) if forward_loss else objective.loss(task(batch), batch)
        if check_loss is not None:
            check_loss(out["loss"])
        backward(out["loss"])
        return out
    micro = split_batch(batch, steps)
    device = _device_of(batch)
    states, cached = [], []
    with torch.no_grad():
        for part in micro:
            states.append(_rng_state(device))
            cached.append(task(part))

    names = list(cached[0])
    per_sample = {name: cached[0][name].ndim > 0 for name in names}
    leaves = {
        name: (torch.cat([c[name] for c in cached]) if per_sample[name] else cached[0][name])
        .detach()
        .requires_grad_()
        for name in names
    }
    out = objective.loss(leaves, batch)
    if check_loss is not None:
        check_loss(out["loss"])
    backward(out["loss"])
    grads = {name: leaf.grad for name, leaf in leaves.items()}

    no_sync = getattr(task, "no_sync", None)
    start = 0
    for k, (part, state) in enumerate(zip(micro, states, strict=True)):
        last = k == len(micro) - 1
        sync = contextlib.nullcontext() if last or no_sync is None else no_sync()
        with sync, _replayed_rng(state, device):
            outputs = task(part)
            rows = next(len(outputs[n]) for n in names if per_sample[n])
            tensors, tensor_grads = [], []
            for name in names:
                if grads[name] is None or not outputs[name].requires_grad:
                    continue  # no gradient, or none to pass on (a momentum encoder's keys)
                if per_sample[name]:
                    tensors.append(outputs[name])
                    tensor_grads.append(grads[name][start : start + rows].to(outputs[name].dtype))
                elif last:
                    tensors.append(outputs[name])
                    tensor_grads.append(grads[name].to(outputs[name].dtype))
            torch.autograd.backward(tensors, tensor_grads)
        start += rows
    return out
