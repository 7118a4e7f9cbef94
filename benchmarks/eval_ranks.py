#!/usr/bin/env python
"""Seconds of the kNN search on each of W gloo processes (one thread each): every rank doing
all of it (before) against each rank doing every W-th test embedding and gathering
(``eval/probes.py``: ``shared_knn_scores``; now), in the same run on the same embeddings. Then
the bank itself split over the ranks, each holding 1/W of it and its own 1/W of the test
embeddings (``eval/knn.py``: ``shared_bank_knn_scores``, the kNN evaluators' search)
against each rank holding the whole bank (``shared_knn_scores``): bytes of bank a rank holds
and seconds. The results are checked equal (the split bank's scores to 1e-6: its similarities
come from another matrix product).

The linear probe's penalty sweep three ways: every rank fitting every penalty on the whole
training set; every rank holding the whole set and fitting every W-th penalty, then gathering
the curve (the evaluator until now); each rank holding 1/W of the set, the ranks fitting every
penalty together with all-reduced sums (``linear_probe``'s ``shared``, the evaluator now):
training bytes a rank holds and seconds; the curves are checked equal.

    python benchmarks/eval_ranks.py [--world 2] [--bank 50000] [--test 4000] [--dim 128]
        [--probe 10000]
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

from vlcontrast.eval.knn import knn_scores, shared_bank_knn_scores
from vlcontrast.eval.linear_probe import sweep_curve
from vlcontrast.eval.probes import shared_knn_scores

PENALTIES = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1]  # the evaluator's default sweep


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
        x, y = train["img_emb"][: args.probe], train["labels"][: args.probe]
        sweep_curve(x[:50], y[:50], classes, PENALTIES[:1])  # warm-up: first-call costs untimed
        dist.barrier()
        start = time.perf_counter()
        curve = sweep_curve(x, y, classes, PENALTIES)
        sweep_before = time.perf_counter() - start
        dist.barrier()
        start = time.perf_counter()
        part = sweep_curve(x, y, classes, PENALTIES[rank::world], 0.2)
        penalty_curve = {k: v for c in dist_objects(part, world) for k, v in c.items()}
        sweep_penalties = time.perf_counter() - start
        rows = torch.arange(len(y))[rank * len(y) // world : (rank + 1) * len(y) // world]
        dist.barrier()
        start = time.perf_counter()
        data_curve = sweep_curve(
            x[rows], y[rows], classes, PENALTIES, 0.2, positions=rows, shared=True
        )
        sweep_now = time.perf_counter() - start
        probe_held = x[rows].nbytes + y[rows].nbytes
        probe_whole = x.nbytes + y.nbytes
        same = bool(torch.equal(whole, shared))
        same = same and dict(sorted(penalty_curve.items())) == curve
        probe_same = max(abs(data_curve[k] - curve[k]) for k in curve)  # validation accuracy
        share = slice(rank * args.bank // world, (rank + 1) * args.bank // world)
        asked = torch.arange(rank, len(test), world)  # the rows shared_knn_scores gave this rank
        dist.barrier()
        start = time.perf_counter()
        split = shared_bank_knn_scores(
            train["img_emb"][share], train["labels"][share], test[asked], classes, args.k, 0.1
        )
        split_time = time.perf_counter() - start
        same = same and torch.allclose(split, whole[asked], rtol=1e-6, atol=1e-6)
        held = train["img_emb"][share].nbytes + train["labels"][share].nbytes
        whole_bytes = train["img_emb"].nbytes + train["labels"].nbytes
        times = [None] * world
        result = (
            before, now, sweep_before, sweep_now, split_time, same, held, whole_bytes,
            sweep_penalties, probe_held, probe_whole, probe_same,
        )  # fmt: skip
        dist.all_gather_object(times, result)
        if rank == 0:
            torch.save(times, out)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def dist_objects(obj, world: int) -> list:
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", type=int, default=2, help="(%(default)s)")
    parser.add_argument("--bank", type=int, default=50_000, help="training embeddings")
    parser.add_argument("--test", type=int, default=4000, help="test embeddings")
    parser.add_argument("--dim", type=int, default=128, help="(%(default)s)")
    parser.add_argument("--k", type=int, default=20, help="(%(default)s)")
    parser.add_argument("--probe", type=int, default=10000, help="embeddings the probe fits")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "times.pt")
        init = os.path.join(tmp, "init")
        mp.spawn(worker, args=(args.world, init, args, out), nprocs=args.world, join=True)
        times = torch.load(out)
    before, now, sweep_before, sweep_now, split = (max(t[i] for t in times) for i in range(5))
    held, whole_bytes = max(t[6] for t in times), times[0][7]
    sweep_penalties, probe_held, probe_whole = (
        max(t[8] for t in times),
        max(t[9] for t in times),
        times[0][10],
    )
    print(
        f"{args.world} gloo ranks x 1 thread (slowest rank); kNN: bank {args.bank} x {args.dim}, "
        f"{args.test} test embeddings, k {args.k}; probe: {args.probe} embeddings, 100 classes, "
        f"{len(PENALTIES)} penalties"
    )
    print(f"  kNN, every rank the whole search (before): {before:.2f} s")
    print(f"  kNN, each rank its 1/{args.world} share (now): {now:.2f} s")
    print(f"  kNN speed-up: {before / now:.2f}x")
    print(f"  probe sweep, every rank every penalty: {sweep_before:.2f} s")
    print(
        "  probe sweep, each rank the whole set and its share of penalties (before): "
        f"{sweep_penalties:.2f} s"
    )
    print(
        "  probe sweep, each rank its share of the set, every penalty together (now): "
        f"{sweep_now:.2f} s"
    )
    print(f"  probe sweep, now / before: {sweep_now / sweep_penalties:.2f}x time")
    print(
        f"  probe training set a rank holds: before {probe_whole / 2**20:.1f} MiB, "
        f"now {probe_held / 2**20:.1f} MiB"
    )
    print(f"  probe memory a rank, before / now: {probe_whole / probe_held:.2f}x")
    gap = max(t[11] for t in times)
    print(f"  probe curves, largest difference from one process's: {gap:.4f}")
    print(f"  probe curves equal one process's: {gap == 0}")
    print(f"  bank a rank holds, the whole bank (kNN above): {whole_bytes / 2**20:.1f} MiB")
    print(
        f"  bank a rank holds, split over the ranks (kNN and dense kNN now): {held / 2**20:.1f} MiB"
    )
    print(f"  bank memory a rank, whole / split: {whole_bytes / held:.2f}x")
    print(f"  kNN with the split bank (each rank its share of queries): {split:.2f} s")
    print(f"  split bank / whole bank time: {split / now:.2f}x")
    print(f"  results equal on every rank: {all(t[5] for t in times)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
