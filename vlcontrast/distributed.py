"""Process-group helpers and the differentiable collectives the contrastive losses use.

Everything degrades gracefully: without a process group ``rank()`` is 0, ``world_size()`` is 1
and every collective returns its input, so each loss runs unchanged in one CPU process.

Gradients are exact, not 1/world_size. Each rank's loss is the sum of its own terms scaled by
``world_size / global_batch`` (the local mean when batches are equal), so the losses of all ranks
add up to ``world_size`` times the global loss, and DDP's gradient *average* is the gradient of
the global loss. For that, the backward of a gather must *sum* over ranks the gradients every rank
computed for a slice: ``all_gather_with_grad`` all-reduces the incoming gradient and keeps its own
rows (the reference trainer's default keeps only the local gradient, which is 1/world_size too
small; see the 2- and 4-process tests in ``tests/test_distributed_losses.py``).

Unequal batches (the last batch of an epoch) are supported: sizes are exchanged first, rows are
padded to the largest batch for the collective and trimmed after it.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def shutdown() -> None:
    """Every rank finished: wait for the others, then tear the process group down. Left to the
    interpreter's exit, gloo's threads aborted a rank now and then ("terminate called without an
    active exception") after a torchrun training had finished."""
    if is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def batch_sizes(n: int, device: torch.device | str = "cpu") -> list[int]:
    """The row count of every rank, in rank order (``[n]`` without a process group)."""
    if world_size() == 1:
        return [n]
    local = torch.tensor([n], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(local) for _ in range(world_size())]
    dist.all_gather(sizes, local)
    return [int(s) for s in sizes]


def all_reduce(x: torch.Tensor, op=None) -> torch.Tensor:
    """In-place all-reduce (sum by default) without autograd; identity in one process."""
    if world_size() > 1:
        dist.all_reduce(x, op=op if op is not None else dist.ReduceOp.SUM)
    return x


class _AllGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        ctx.sizes, ctx.rank = sizes, rank()
        padded = x.new_zeros((max(sizes), *x.shape[1:]))
        padded[: x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous())
        return torch.cat([part[:n] for part, n in zip(parts, sizes, strict=True)])  # (N, ...)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # sum of every rank's gradient for every row
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None


def all_gather_with_grad(x: torch.Tensor, sizes: list[int] | None = None) -> torch.Tensor:
    """Rows of ``x`` from every rank, concatenated in rank order; differentiable, exact.

    ``sizes`` (from :func:`batch_sizes`) saves one collective when the caller already has it.
    """
    if world_size() == 1:
        return x
    sizes = sizes if sizes is not None else batch_sizes(x.shape[0], x.device)
    return _AllGather.apply(x, sizes)


class _AllReduce(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = x.contiguous().clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # every rank's loss depends on every rank's term
        return grad


def all_reduce_with_grad(x: torch.Tensor) -> torch.Tensor:
    """The sum of ``x`` over ranks, differentiable. For a loss that every rank computes
    identically from the sum (Barlow Twins' cross-correlation), the backward all-reduces the
    gradient, so after DDP's average each rank holds the gradient of that one loss."""
    if world_size() == 1:
        return x
    return _AllReduce.apply(x)


def all_gather_no_grad(x: torch.Tensor, sizes: list[int] | None = None) -> torch.Tensor:
    """Like :func:`all_gather_with_grad` for tensors that carry no gradient (labels)."""
    if world_size() == 1:
        return x
    with torch.no_grad():
        return all_gather_with_grad(x.detach(), sizes)


def all_gather_rows(
    x: torch.Tensor, sizes: list[int], device: torch.device | str = "cpu", chunk: int = 1024
) -> torch.Tensor:
    """Rows of ``x`` (on the CPU, ``sizes`` of every rank) from every rank in rank order, on the
    CPU. Sent ``chunk`` rows at a time through ``device`` (NCCL gathers only GPU tensors), so a
    large bank of features never needs to fit the GPU at once."""
    if world_size() == 1 or not max(sizes):  # nothing anywhere: this rank's empty rows
        return x
    padded = x.new_zeros((max(sizes), *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts: list[list[torch.Tensor]] = [[] for _ in sizes]
    for start in range(0, max(sizes), chunk):
        piece = padded[start : start + chunk].to(device).contiguous()
        got = [torch.empty_like(piece) for _ in sizes]
        dist.all_gather(got, piece)
        for part, received in zip(parts, got, strict=True):
            part.append(received.cpu())
    return torch.cat([torch.cat(part)[:n] for part, n in zip(parts, sizes, strict=True)])


def _send_recv(tensor: torch.Tensor, to: int, frm: int, recv_rows: int) -> torch.Tensor:
    received = tensor.new_empty((recv_rows, *tensor.shape[1:]))
    ops = [
        dist.P2POp(dist.isend, tensor.contiguous(), to),
        dist.P2POp(dist.irecv, received, frm),
    ]
    for request in dist.batch_isend_irecv(ops):
        request.wait()
    return received


class _NeighbourExchange(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, to: int, frm: int, recv_rows: int) -> torch.Tensor:
        ctx.to, ctx.frm, ctx.sent_rows = to, frm, x.shape[0]
        return _send_recv(x, to, frm, recv_rows)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        # The gradient of what we received goes back to its sender; ours comes back from `to`.
        return _send_recv(grad, ctx.frm, ctx.to, ctx.sent_rows), None, None, None


def neighbour_exchange(x: torch.Tensor, to: int, frm: int, recv_rows: int) -> torch.Tensor:
    """Send ``x`` to rank ``to`` and return the ``recv_rows`` rows rank ``frm`` sent us.

    Differentiable: the backward returns each gradient to the rank that owns the rows. Used by
    the distributed SigLIP loss to pass text chunks around a ring.
    """
    return _NeighbourExchange.apply(x, to, frm, recv_rows)


def all_gather_objects(obj):
    """Every rank's ``obj`` (picklable), in rank order: ``[obj]`` without a process group."""
    if world_size() == 1:
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def print0(*args) -> None:
    """Print on the main process only: the one place rank-0 output is decided. Goes through
    ``tqdm.write`` so that a progress bar on screen is redrawn below the line."""
    if is_main():
        from tqdm.auto import tqdm

        tqdm.write(" ".join(str(a) for a in args))
