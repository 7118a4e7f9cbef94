#!/usr/bin/env python
"""Checkpoints of an FSDP run: sharded (``train.sharded_checkpoints``, the default) against the
rank-0 gather into single files (``train.sharded_checkpoints=false``), in the same run.

    python benchmarks/checkpoint_save.py [--preset b32] [--world 2]

For each way, ``--world`` gloo processes (fresh interpreters) shard a ``model.preset`` CLIP with
FSDP2 exactly as the trainer does (``train/fsdp.py``), take one AdamW step so the optimizer has
its moments, then save a checkpoint through the trainer's own ``save_checkpoint`` and restore it
onto a fresh sharded model and optimizer through ``checkpoint.restore``. It prints, per phase,
the wall time and the peak resident memory that the phase adds on rank 0 and on the busiest
other rank (the figure that decides whether a model fits the host), with ratios sharded / full.
Memory is measured with glibc told to mmap every allocation over 1 MiB (see ``measure.py``), so
the peak tracks live tensors.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import GIB, peak_bytes, reset_peak, rss_bytes  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sharded_clip(cfg):
    from vlcontrast.models.build import build_model
    from vlcontrast.train import fsdp

    torch.manual_seed(0)
    model = fsdp.shard(build_model(cfg), torch.device("cpu"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for param in model.parameters():  # one step, so Adam holds both moments of every weight
        param.grad = torch.ones_like(param)
    optimizer.step()
    optimizer.zero_grad()
    return model, optimizer


def full(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def measured(phase):
    """Run ``phase()`` on every rank between barriers: seconds, and the peak RSS it added."""
    dist.barrier()
    reset_peak()
    before, start = rss_bytes(), time.perf_counter()
    phase()
    dist.barrier()
    return time.perf_counter() - start, peak_bytes() - before


def worker(rank: int, world: int, port: int, way: str, preset: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from vlcontrast import config as config_lib
    from vlcontrast.train import checkpoint, fsdp
    from vlcontrast.train.resume import save_checkpoint

    cfg = config_lib.resolve(config_lib.load(None, [f"model.preset={preset}"]))
    cfg.train.sharded_checkpoints = way == "sharded"
    root = Path(out) / way / "checkpoints"
    model, optimizer = sharded_clip(cfg)
    accelerator = SimpleNamespace(wait_for_everyone=dist.barrier, is_main_process=rank == 0)
    parts = {"optimizer": fsdp.ShardedOptimizer(model, optimizer)}
    save = measured(lambda: save_checkpoint(accelerator, root, model, parts, 1, cfg, None))

    fresh, fresh_optimizer = sharded_clip(cfg)
    fresh_parts = {"optimizer": fsdp.ShardedOptimizer(fresh, fresh_optimizer)}
    restore = measured(lambda: checkpoint.restore(checkpoint.latest(root), fresh, fresh_parts))
    for a, b in zip(model.parameters(), fresh.parameters(), strict=True):  # restored exactly
        assert torch.equal(full(a), full(b))
    rows = [None] * world
    dist.all_gather_object(rows, {"save": save, "restore": restore})
    if rank == 0:
        files = [p for p in checkpoint.latest(root).rglob("*") if p.is_file()]
        result = {
            "ranks": rows,
            "files": len(files),
            "bytes": sum(p.stat().st_size for p in files),
            "params": sum(p.numel() for p in model.parameters()),
        }
        Path(out, f"{way}.json").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="b32", help="model.preset to shard (tiny, s32, b32)")
    parser.add_argument("--world", type=int, default=2, help="gloo processes")
    args = parser.parse_args()
    os.environ["MALLOC_MMAP_THRESHOLD_"] = str(1 << 20)  # inherited by the spawned ranks
    results = {}
    with tempfile.TemporaryDirectory() as out:
        for way in ("full", "sharded"):
            mp.spawn(
                worker, args=(args.world, free_port(), way, args.preset, out), nprocs=args.world
            )
            results[way] = json.loads(Path(out, f"{way}.json").read_text())
    params = results["full"]["params"]
    print(
        f"FSDP checkpoint of model.preset={args.preset} ({params / 1e6:.1f}M parameters + AdamW "
        f"moments) on {args.world} gloo processes, CPU"
    )
    print("| phase | way | seconds | rank-0 peak GiB | other ranks GiB | files | GiB on disk |")
    print("|---|---|---|---|---|---|---|")
    figures = {}
    for phase in ("save", "restore"):
        for way in ("full", "sharded"):
            ranks = results[way]["ranks"]
            seconds = max(r[phase][0] for r in ranks)
            rank0 = ranks[0][phase][1] / GIB
            others = max((r[phase][1] for r in ranks[1:]), default=0) / GIB
            figures[phase, way] = (seconds, rank0, others)
            print(
                f"| {phase} | {way} | {seconds:.2f} | {rank0:.3f} | {others:.3f} | "
                f"{results[way]['files']} | {results[way]['bytes'] / GIB:.2f} |"
            )
    for phase in ("save", "restore"):
        (s_full, r0_full, o_full), (s_sh, r0_sh, o_sh) = (
            figures[phase, "full"],
            figures[phase, "sharded"],
        )
        print(
            f"{phase}: sharded / full: time {s_sh / s_full:.2f}x, rank-0 peak "
            f"{r0_sh / max(r0_full, 1e-9):.3f}x, other ranks' peak {o_sh / max(o_full, 1e-9):.3f}x"
        )


if __name__ == "__main__":
    main()
