#!/usr/bin/env python
"""Seconds of the kNN evaluator's search on each of W gloo processes (one thread each), every
rank searching every test embedding (before) against each rank searching every W-th one and
gathering the scores (``eval/probes.py: shared_knn_scores``, now), in the same run on the same
bank. Every rank holds the whole bank either way; the scores are checked equal.

    python benchmarks/knn_ranks.py [--world 2] [--bank 50000] [--test 4000] [--dim 128]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vlcontrast.eval.knn import knn_scores
from vlcontrast.eval.probes import shared_knn_scores


def inputs(bank: int, test: int, dim: int, classes: int = 100):
    g = torch.Generator().manual_seed(0)
    train = torch.nn.functional.normalize(torch.randn(bank, dim, generator=g), dim=1)
    labels = torch.randint(0, classes, (bank,), generator=g)
    queries = torch.nn.functional.normalize(torch.randn(test, dim, generator=g), dim=1)
    return {"img_emb": train, "labels": labels}, queries, classes


def worker(rank: int, world: int, init: str, args: argparse.Namespace, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    try:
        train, test, classes = inputs(args.bank, args.test, args.dim)
        dist.barrier()
        start = time.perf_counter()
        whole = knn_scores(train["img_emb"], train["labels"], test, classes, args.k, 0.1)
        before = time.perf_counter() - start
        dist.barrier()
        start = time.perf_counter()
        shared = shared_knn_scores(train, test, classes, args.k, 0.1, "cpu")
        now = time.perf_counter() - start
        times = [None] * world
        dist.all_gather_object(times, (before, now, bool(torch.equal(whole, shared))))
        if rank == 0:
            torch.save(times, out)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", type=int, default=2, help="(%(default)s)")
    parser.add_argument("--bank", type=int, default=50_000, help="training embeddings")
    parser.add_argument("--test", type=int, default=4000, help="test embeddings")
    parser.add_argument("--dim", type=int, default=128, help="(%(default)s)")
    parser.add_argument("--k", type=int, default=20, help="(%(default)s)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "times.pt")
        init = os.path.join(tmp, "init")
        mp.spawn(worker, args=(args.world, init, args, out), nprocs=args.world, join=True)
        times = torch.load(out)
    before = max(t[0] for t in times)
    now = max(t[1] for t in times)
    print(
        f"kNN search, {args.world} gloo ranks x 1 thread, bank {args.bank} x {args.dim}, "
        f"{args.test} test embeddings, k {args.k} (slowest rank):"
    )
    print(f"  every rank searches every test embedding (before): {before:.2f} s")
    print(f"  each rank its 1/{args.world} share, then a gather (now): {now:.2f} s")
    print(
        f"  speed-up: {before / now:.2f}x; scores equal on every rank: {all(t[2] for t in times)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
