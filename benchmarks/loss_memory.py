#!/usr/bin/env python
"""Peak memory and time of the CLIP loss, textbook vs tiled, forward + backward.

    python benchmarks/loss_memory.py [--sizes 4096,16384,65536] [--dim 512] [--tile 1024]

For each batch size B it runs, each in a fresh subprocess so that peaks do not mix:

- ``naive``: the textbook loss (``vlcontrast.losses.clip.clip_loss``: the full B x B logit
  matrix, cross-entropy both ways) and its autograd backward;
- ``tiled``: ``vlcontrast.losses.tiled.tiled_clip_loss`` (online log-sum-exp over tiles, custom
  backward that recomputes each tile).

Inputs are random L2-normalised float32 (B, D) embeddings at logit scale 100 (the clamp). The
memory figure is the peak resident memory added by forward + backward: ``ru_maxrss`` after the
run minus the resident size just before it (inputs, a warm-up call and the thread pool are in
the baseline); with ``--device cuda`` it is the allocator's peak minus what was allocated
before. Time is wall clock of forward + backward. Both variants run in the same invocation and
the ratios (naive / tiled memory, tiled / naive time) are printed per size. Where the naive
loss cannot fit (its estimate, scaled by B² from the largest measured size, exceeds 80% of
MemAvailable) it is skipped and the memory it would need is printed instead.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from measure import GIB, mem_available, peak_bytes, reset_peak, rss_bytes, run_isolated


def run_one(variant: str, batch: int, dim: int, tile: int, device: str = "cpu") -> dict:
    """Measure one (variant, B) in this process; returns seconds and added peak bytes."""
    from vlcontrast.losses.clip import clip_loss
    from vlcontrast.losses.tiled import tiled_clip_loss

    def loss_fn(img, txt, scale):
        if variant == "naive":
            return clip_loss(img, txt, scale)
        return tiled_clip_loss(img, txt, scale, tile_size=tile)

    def inputs(n: int, seed: int):
        gen = torch.Generator().manual_seed(seed)
        img = F.normalize(torch.randn(n, dim, generator=gen), dim=1).to(device).requires_grad_()
        txt = F.normalize(torch.randn(n, dim, generator=gen), dim=1).to(device).requires_grad_()
        return img, txt, torch.tensor(100.0, device=device, requires_grad=True)

    cuda = device.startswith("cuda")
    warm = inputs(256, 1)
    loss_fn(*warm).backward()  # thread pool and kernels warm, outside the measurement
    img, txt, scale = inputs(batch, 0)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    if not cuda:
        reset_peak()
    base = torch.cuda.memory_allocated() if cuda else rss_bytes()
    start = time.perf_counter()
    loss = loss_fn(img, txt, scale)
    loss.backward()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if cuda else peak_bytes()
    return {"seconds": seconds, "added_bytes": peak - base, "loss": float(loss)}


def measure(variant: str, batch: int, dim: int, tile: int, device: str) -> dict:
    args = ["--one", variant, str(batch), "--dim", str(dim), "--tile", str(tile)]
    return run_isolated(__file__, [*args, "--device", device])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="4096,16384,65536", help="comma-separated batch sizes")
    parser.add_argument("--dim", type=int, default=512, help="embedding width D")
    parser.add_argument("--tile", type=int, default=1024, help="tile size of the tiled loss")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (GPU memory by the allocator)")
    parser.add_argument("--one", nargs=2, metavar=("VARIANT", "B"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.one[0], int(args.one[1]), args.dim, args.tile, args.device)))
        return

    if args.device.startswith("cuda"):
        where = f"{torch.cuda.get_device_name()}; memory = peak allocated by the call"
    else:
        where = f"{torch.get_num_threads()} CPU threads; memory = peak RSS added by the call"
    print(f"CLIP loss forward+backward, D={args.dim}, tile={args.tile}, float32, {where}")
    header = (
        f"{'B':>7} | {'naive s':>8} {'naive GiB':>10} | {'tiled s':>8} {'tiled GiB':>10} | "
        f"{'mem naive/tiled':>15} {'time tiled/naive':>16}"
    )
    print(header)
    print("-" * len(header))
    naive_per_b2, skipped = None, False
    for batch in [int(s) for s in args.sizes.split(",")]:
        tiled = measure("tiled", batch, args.dim, args.tile, args.device)
        need = naive_per_b2 * batch**2 if naive_per_b2 else None
        if need is not None and need > 0.8 * mem_available(args.device):
            naive, skipped = None, True
            naive_cols = f"{'skipped':>8} {need / GIB:>9.1f}*"
        else:
            naive = measure("naive", batch, args.dim, args.tile, args.device)
            naive_per_b2 = naive["added_bytes"] / batch**2
            naive_cols = f"{naive['seconds']:>8.2f} {naive['added_bytes'] / GIB:>10.3f}"
        tiled_cols = f"{tiled['seconds']:>8.2f} {tiled['added_bytes'] / GIB:>10.3f}"
        if naive is not None:
            mem_ratio = naive["added_bytes"] / max(tiled["added_bytes"], 1)
            time_ratio = tiled["seconds"] / naive["seconds"]
            ratios = f"{mem_ratio:>14.1f}x {time_ratio:>15.2f}x"
            if abs(naive["loss"] - tiled["loss"]) > 1e-4 * abs(naive["loss"]):
                ratios += f"  LOSSES DIFFER: {naive['loss']} vs {tiled['loss']}"
        else:
            ratios = f"{'-':>15} {'-':>16}"
        print(f"{batch:>7} | {naive_cols} | {tiled_cols} | {ratios}", flush=True)
    if skipped:
        print(
            "* skipped: the naive loss would need about this much (scaled by B^2 from the "
            "largest size measured), more than 80% of MemAvailable"
        )


if __name__ == "__main__":
    main()
