"""Worker side of the distributed image-only objective tests (spawned by test_ssl_objectives.py):
W gloo processes, each with its slice of one fixed global batch of two-view images, run one
forward/backward of an objective (the task: a tiny model plus the method's own heads) under
DDP; rank 0 saves the rank-averaged loss and the DDP-averaged gradients of every task parameter
(heads included) for comparison with one process on the whole batch."""

from __future__ import annotations

import os
from types import SimpleNamespace

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from tests.probe_objective import ProbeObjective
from vlcontrast.objective_settings import (
    BarlowTwinsConfig,
    BYOLConfig,
    HeadConfig,
    MoCoConfig,
    MoCoV3Config,
    SimCLRConfig,
    SupConConfig,
)
from vlcontrast.objectives.barlow import BarlowTwinsObjective
from vlcontrast.objectives.base import step_loss
from vlcontrast.objectives.byol import BYOLObjective
from vlcontrast.objectives.moco import MoCoObjective, MoCoV3Objective
from vlcontrast.objectives.simclr import SimCLRObjective
from vlcontrast.objectives.supcon import SupConObjective

GLOBAL_BATCH = 12


class TinyImageModel(nn.Module):
    """The image-only model contract on flat 6-d 'images' in float64: pooled features of width
    ``image.num_features`` (8); with ``bn``, batch norm inside (per device, as DDP leaves it)."""

    def __init__(self, bn: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.image = SimpleNamespace(num_features=8)
        norm = nn.BatchNorm1d(8) if bn else nn.Identity()
        self.net = nn.Sequential(nn.Linear(6, 8), norm, nn.Tanh(), nn.Linear(8, 8))
        self.double()

    def forward(self, images=None, input_ids=None, attention_mask=None, feature_map=False):
        return {"img_feat": self.net(images)}


def model_for(name: str) -> TinyImageModel:
    return TinyImageModel(bn=name.endswith("_bn"))


def heads(bn: bool) -> dict:
    """Small heads: projector 8 -> 7 -> 5, predictor 5 -> 7 -> 5 (batch norm with ``bn``)."""
    return {
        "projector": HeadConfig(2, 7, 5, bn, "bn" if bn else "none"),
        "predictor": HeadConfig(2, 7, 0, bn),
    }


def make_objective(name: str, model: nn.Module):
    h = heads(bn=name.endswith("_bn"))
    objective = {
        "simclr": lambda: SimCLRObjective(SimCLRConfig(0.5, h["projector"])),
        "simclr_bn": lambda: SimCLRObjective(SimCLRConfig(0.5, h["projector"])),
        "mocov3": lambda: MoCoV3Objective(MoCoV3Config(0.2, 0.99, 1.0, **h)),
        "barlow_twins": lambda: BarlowTwinsObjective(BarlowTwinsConfig(5e-3, h["projector"])),
        "byol": lambda: BYOLObjective(BYOLConfig(0.996, 1.0, **h)),
        "byol_bn": lambda: BYOLObjective(BYOLConfig(0.996, 1.0, **h)),
        "supcon": lambda: SupConObjective(SupConConfig(0.1, h["projector"])),
        "moco_bn": lambda: MoCoObjective(MoCoConfig(0.2, 0.99, 24, False, h["projector"])),
        "probe": ProbeObjective,
    }[name]()
    cfg = SimpleNamespace(
        objective=SimpleNamespace(name=name), train=SimpleNamespace(steps=10, fsdp=False, seed=0)
    )
    torch.manual_seed(1)  # the heads: the same in every process
    objective.setup(model, cfg, GLOBAL_BATCH)
    return objective


# *_bn: batch norm in the model and heads, per device under DDP; compared with one process
# whose batch norm is split into the devices' groups (model.bn_split). moco_bn: MoCo v2's
# shuffle BN, the keys encoded in a random order across the devices
CASES = [
    "simclr",
    "mocov3",
    "barlow_twins",
    "byol",
    "supcon",
    "probe",
    "simclr_bn",
    "byol_bn",
    "moco_bn",
]


def global_batch() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return {
        "images": torch.randn(GLOBAL_BATCH, 2, 6, generator=gen, dtype=torch.float64),
        "labels": torch.tensor([0, 1, 2, 0, 1, 2, 3, 0, 3, 1, 2, 2]),
    }


def worker(rank: int, world: int, init_file: str, out_path: str, sizes=None) -> None:
    """``sizes``: each rank's rows of the global batch (default: equal); with uneven sizes the
    per-device batch-norm case is left out (its reference splits evenly)."""
    torch.set_num_threads(1)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        sizes = sizes or [GLOBAL_BATCH // world] * world
        start = sum(sizes[:rank])
        batch = {k: v[start : start + sizes[rank]] for k, v in global_batch().items()}
        results = {}
        even = len(set(sizes)) == 1
        for name in CASES if even else [c for c in CASES if not c.endswith("_bn")]:
            task = DistributedDataParallel(make_objective(name, model_for(name)))
            loss = step_loss(task, batch)["loss"]
            loss.backward()
            loss = loss.detach().clone()
            dist.all_reduce(loss)
            grads = {
                n: p.grad.clone() for n, p in task.module.named_parameters() if p.grad is not None
            }
            results[name] = {"loss": loss / world, "grads": grads}
        if rank == 0:
            torch.save({"world": world, **results}, out_path)
        dist.barrier()  # no rank tears gloo down while another still talks
    finally:
        dist.destroy_process_group()
