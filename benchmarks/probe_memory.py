#!/usr/bin/env python
"""Peak memory and time of one evaluation of the linear probe's objective and gradient.

    python benchmarks/probe_memory.py [--rows 262144] [--dim 256] [--classes 1000]

The probe's L-BFGS evaluates the objective and its gradient about 50 times a fit. Each variant
runs one evaluation (after one untimed warm-up on 4,096 rows) in a fresh subprocess:

- ``full``: the whole batch's logits at once (``logistic_objective`` and autograd: the probe
  until now, and the usual way of writing it);
- ``chunked``: ``linear_probe.objective_and_gradient``, ``CHUNK_ROWS`` rows of logits at a time.

Memory is the peak RSS added by the call (the embeddings are in the baseline). Printed: both,
their ratio, and the largest difference of the objectives and gradients (they should agree to
float32 rounding).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from measure import GIB, peak_bytes, reset_peak, rss_bytes, run_isolated


def run_one(variant: str, rows: int, dim: int, classes: int) -> dict:
    from vlcontrast.eval import linear_probe as lp

    gen = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(rows, dim, generator=gen), dim=-1)
    y = torch.randint(0, classes, (rows,), generator=gen)
    weight = (0.01 * torch.randn(dim, classes, generator=gen)).requires_grad_(True)
    bias = torch.zeros(classes, requires_grad=True)

    def full(x, y):
        weight.grad = bias.grad = None
        loss = lp.logistic_objective(x, y, weight, bias, 1e-4)
        loss.backward()
        return loss.detach()

    def chunked(x, y):
        return lp.objective_and_gradient(x, y, weight, bias, 1e-4, total=len(y))

    fn = full if variant == "full" else chunked
    fn(x[:4096], y[:4096])  # thread pool and allocator warm-up, unmeasured
    weight.grad = bias.grad = None
    reset_peak()
    base = rss_bytes()
    start = time.perf_counter()
    value = fn(x, y)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "added_bytes": peak_bytes() - base,
        "value": value.item(),
        "grad": weight.grad.flatten()[:: max(1, weight.numel() // 4096)].tolist(),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=262_144, help="training embeddings")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.one, args.rows, args.dim, args.classes)))
        return {}
    from vlcontrast.eval.linear_probe import CHUNK_ROWS

    full = run_isolated(__file__, ["--one", "full", *sys_args(args)])
    chunked = run_isolated(__file__, ["--one", "chunked", *sys_args(args)])
    gap = max(abs(a - b) for a, b in zip(full["grad"], chunked["grad"], strict=True))
    print(
        f"linear probe objective + gradient, {args.rows} x {args.dim} embeddings, "
        f"{args.classes} classes, float32, {torch.get_num_threads()} CPU threads; "
        f"chunks of {CHUNK_ROWS} rows; memory = peak RSS added by the call"
    )
    for name, result in (("full batch (before)", full), ("chunked (now)", chunked)):
        print(f"  {name:>20}: {result['seconds']:.2f} s, {result['added_bytes'] / GIB:.3f} GiB")
    mem = full["added_bytes"] / max(chunked["added_bytes"], 1)
    print(f"  memory, full / chunked: {mem:.2f}x")
    print(f"  time, chunked / full: {chunked['seconds'] / full['seconds']:.2f}x")
    print(
        f"  objective difference {abs(full['value'] - chunked['value']):.1e}, "
        f"largest gradient difference {gap:.1e}"
    )
    return {"full": full, "chunked": chunked}


def sys_args(args: argparse.Namespace) -> list[str]:
    return ["--rows", str(args.rows), "--dim", str(args.dim), "--classes", str(args.classes)]


if __name__ == "__main__":
    main()
