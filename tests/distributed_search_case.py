"""Worker side of the distributed index-build test (spawned by test_search.py): each gloo process
builds its share of the index's units, as under ``torchrun -m vlcontrast.cli index build``."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from vlcontrast.search.build import BuildOptions, build_index
from vlcontrast.search.units import SourceSpec


def worker(rank: int, world: int, init_file: str, out: str, pattern: str, checkpoint: str):
    torch.set_num_threads(1)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        options = BuildOptions(batch_size=16, num_workers=0, progress=False, dtype="float32")
        summary = build_index(out, [SourceSpec(pattern)], checkpoint, options)
        embedded = [None] * world
        dist.all_gather_object(embedded, summary["embedded_now"])
        if rank == 0:
            torch.save({"summary": summary, "embedded": embedded}, f"{out}/ranks.pt")
        dist.barrier()  # no rank tears gloo down while another still talks
    finally:
        dist.destroy_process_group()
