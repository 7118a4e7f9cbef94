"""Worker side of the locking test (spawned by test_locking.py): W gloo processes train a tiny
CLIP with a locked image tower under DDP with its production default (every trainable parameter
used, no find_unused_parameters); rank 0 saves the weights before and after."""

from __future__ import annotations

import json
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from vlcontrast import config as config_lib
from vlcontrast.models import build_model
from vlcontrast.objectives import build_objective
from vlcontrast.objectives.base import step_loss
from vlcontrast.train.locking import apply_locks
from vlcontrast.train.optim import build_optimizer


def worker(rank: int, world: int, init_file: str, cfg_path: str, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        cfg = config_lib.from_dict(json.loads(open(cfg_path).read()))
        torch.manual_seed(0)
        model = build_model(cfg)
        apply_locks(model, cfg.lock)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        task = build_objective(cfg.objective)
        task.setup(model, cfg, 4 * world)
        ddp = DistributedDataParallel(task)
        optimizer = build_optimizer(task, cfg.optim)
        gen = torch.Generator().manual_seed(rank)
        for _ in range(3):
            ddp.train()
            batch = {
                "images": torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=gen),
                "input_ids": torch.randint(5, 60, (4, 8), generator=gen),
                "attention_mask": torch.ones(4, 8, dtype=torch.long),
            }
            loss = step_loss(ddp, batch)["loss"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        modes = {name: m.training for name, m in model.named_modules() if name.count(".") <= 2}
        after = {k: v.clone() for k, v in model.state_dict().items()}
        if rank == 0:
            torch.save({"before": before, "after": after, "modes": modes}, out)
        dist.barrier()  # no rank tears gloo down while another still talks
    finally:
        dist.destroy_process_group()
