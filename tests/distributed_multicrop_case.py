"""Worker side of the SwAV / DINO / DenseCL distributed tests (spawned by
test_multicrop_methods.py, and run in one process as the reference): each of W gloo processes
takes its slice of one fixed global batch of multi-crop (or two-view) 'images', and two
training steps run through the library's objective under DDP (SGD step and ``after_step``
between them), so the second step uses what the first left: SwAV's queue (each rank scoring
its share) and unfrozen prototypes, DINO's centre (reduced across ranks), warmed teacher
temperature and unfrozen last layer, DenseCL's two queues (keys of every rank) and the
momentum encoder; ``densecl_bn`` with batch norm per device, its keys shuffled across ranks
(MoCo's shuffle BN). Rank 0 saves both steps' rank-averaged losses, the DDP-averaged gradients
and the state that every rank shares."""

from __future__ import annotations

import os
from types import SimpleNamespace

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from vlcontrast.objective_settings import DenseCLConfig, DINOConfig, HeadConfig, SwAVConfig
from vlcontrast.objectives.base import step_loss
from vlcontrast.objectives.densecl import DenseCLObjective
from vlcontrast.objectives.dino import DINOObjective
from vlcontrast.objectives.swav import SwAVObjective

GLOBAL_BATCH = 12
METHODS = ["swav", "dino", "densecl", "densecl_bn"]


class TinyMapModel(nn.Module):
    """The image-only model contract on flat 6-d 'images' in float64: a map of 3 locations of
    width 8 (``img_map`` (B, 3, 8), a ViT's tokens) and pooled features ``img_feat``; with
    ``bn``, batch norm (per device under DDP) before the map's tanh."""

    def __init__(self, bn: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.image = SimpleNamespace(num_features=8)
        linear = nn.Linear(6, 24)
        self.locations = nn.Sequential(linear, nn.BatchNorm1d(24)) if bn else linear
        self.pool = nn.Linear(8, 8)
        self.double()

    def forward(self, images=None, input_ids=None, attention_mask=None, feature_map=False):
        img_map = torch.tanh(self.locations(images)).view(len(images), 3, 8)
        out = {"img_feat": self.pool(img_map.mean(dim=1))}
        if feature_map:
            out["img_map"] = img_map
        return out


def make_objective(name: str):
    """``name``'s objective with small heads, set up on a fresh TinyMapModel."""
    head = HeadConfig(2, 7, 5, False)
    if name == "swav":
        task = SwAVObjective(
            SwAVConfig(
                temperature=0.2,
                epsilon=0.5,
                prototypes=4,
                freeze_prototypes_steps=1,
                queue_size=GLOBAL_BATCH,
                queue_start_epochs=0,
                projector=head,
            )
        )
    elif name == "dino":
        task = DINOObjective(
            DINOConfig(
                out_dim=6,
                student_temp=0.5,
                teacher_temp=0.07,
                warmup_teacher_temp=0.04,
                warmup_teacher_temp_epochs=2,
                momentum=0.9,
                freeze_last_layer_epochs=1,
                projector=HeadConfig(3, 7, 5, False, act="gelu"),
            )
        )
    else:
        task = DenseCLObjective(
            DenseCLConfig(
                temperature=0.2,
                momentum=0.9,
                queue_size=2 * GLOBAL_BATCH,
                projector=head,
                dense_head=HeadConfig(2, 7, 4, False),
            )
        )
    cfg = SimpleNamespace(
        objective=SimpleNamespace(name=name),
        train=SimpleNamespace(steps=10, fsdp=False, seed=0),
    )
    task.epoch_steps = 1
    torch.manual_seed(1)  # the heads: the same in every process
    task.setup(TinyMapModel(bn=name.endswith("_bn")), cfg, GLOBAL_BATCH)
    return task


def global_batch(name: str, step: int) -> dict:
    gen = torch.Generator().manual_seed(10 + step)
    if name.startswith("densecl"):
        return {"images": torch.randn(GLOBAL_BATCH, 2, 6, generator=gen, dtype=torch.float64)}
    return {
        "views": {
            "global": torch.randn(GLOBAL_BATCH, 2, 6, generator=gen, dtype=torch.float64),
            "local": torch.randn(GLOBAL_BATCH, 3, 6, generator=gen, dtype=torch.float64),
        }
    }


def rows(batch: dict, lo: int, hi: int) -> dict:
    return {k: rows(v, lo, hi) if isinstance(v, dict) else v[lo:hi] for k, v in batch.items()}


def shared_state(task) -> dict:
    """The state every rank holds alike: the momentum teacher, centre, queues and counters
    (not batch-norm statistics: DDP keeps rank 0's, one process with split batch norm the mean
    of the groups')."""
    keep = {"center", "steps", "queue", "queue_ptr", "queue_filled", "dense_queue"}
    state = task.state_dict()
    return {
        k: v.clone()
        for k, v in state.items()
        if (k.startswith("target.") or k in keep)
        and not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    }


def two_steps(name: str, task, wrapped, lo: int, hi: int, world: int) -> dict:
    """Two steps of ``wrapped`` (the task, DDP-wrapped or not) on rows lo:hi of each batch."""
    optimizer = torch.optim.SGD(task.parameters(), lr=0.5)
    results = {}
    for step in (1, 2):
        optimizer.zero_grad()
        loss = step_loss(wrapped, rows(global_batch(name, step), lo, hi))["loss"]
        loss.backward()
        loss = loss.detach().clone()
        if world > 1:
            dist.all_reduce(loss)
        grads = {n: p.grad.clone() for n, p in task.named_parameters() if p.grad is not None}
        results[step] = {"loss": loss / world, "grads": grads}
        optimizer.step()
        task.after_step(step)
    results["state"] = shared_state(task)
    return results


def worker(rank: int, world: int, init_file: str, out_path: str) -> None:
    torch.set_num_threads(1)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        per = GLOBAL_BATCH // world
        results = {"world": world}
        for name in METHODS:
            task = make_objective(name)
            wrapped = DistributedDataParallel(task)
            results[name] = two_steps(name, task, wrapped, rank * per, (rank + 1) * per, world)
        if rank == 0:
            torch.save(results, out_path)
        dist.barrier()
    finally:
        dist.destroy_process_group()
