"""Worker side of the distributed image-only objective tests (spawned by test_ssl_objectives.py):
W gloo processes, each with its slice of one fixed global batch of two-view images, run one
forward/backward of an objective class on a tiny DDP model; rank 0 saves the rank-averaged loss
and the DDP-averaged gradients for comparison with one process on the whole batch."""

from __future__ import annotations

import os
from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from vlcontrast.objectives.barlow import BarlowTwinsObjective
from vlcontrast.objectives.byol import BYOLObjective
from vlcontrast.objectives.moco import MoCoV3Objective
from vlcontrast.objectives.simclr import SimCLRConfig, SimCLRObjective
from vlcontrast.objectives.supcon import SupConObjective

GLOBAL_BATCH = 12


class TinyImageModel(nn.Module):
    """The image-only model contract on flat 6-d 'images' in float64: projection, unit-norm
    embedding and prediction."""

    def __init__(self, predictor: bool = True, bn: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.embed_dim = 5
        norm = nn.BatchNorm1d(8) if bn else nn.Identity()  # per device, as DDP leaves it
        self.net = nn.Sequential(nn.Linear(6, 8), norm, nn.Tanh(), nn.Linear(8, 5))
        self.predictor = (
            nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 5)) if predictor else None
        )  # only where the objective uses it: DDP's buckets wait for every parameter
        self.double()

    def forward(self, images=None, input_ids=None, attention_mask=None):
        proj = self.net(images)
        out = {"img_proj": proj, "img_emb": F.normalize(proj, dim=-1)}
        if self.predictor is not None:
            out["img_pred"] = F.normalize(self.predictor(proj), dim=-1)
        return out


def model_for(name: str) -> TinyImageModel:
    return TinyImageModel(predictor=name in ("mocov3", "byol"), bn=name.endswith("_bn"))


def make_objective(name: str, model: nn.Module):
    objective = {
        "simclr": lambda: SimCLRObjective(SimCLRConfig(temperature=0.5)),
        "simclr_bn": lambda: SimCLRObjective(SimCLRConfig(temperature=0.5)),
        "mocov3": MoCoV3Objective,
        "barlow_twins": BarlowTwinsObjective,
        "byol": BYOLObjective,
        "supcon": SupConObjective,
    }[name]()
    cfg = SimpleNamespace(
        objective=SimpleNamespace(name=name), train=SimpleNamespace(steps=10, fsdp=False)
    )
    objective.setup(model, cfg, GLOBAL_BATCH)
    return objective


CASES = ["simclr", "mocov3", "barlow_twins", "byol", "supcon", "simclr_bn"]


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
            model = DistributedDataParallel(model_for(name))
            objective = make_objective(name, model)
            loss = objective(model, batch)["loss"]
            loss.backward()
            loss = loss.detach().clone()
            dist.all_reduce(loss)
            grads = {
                n: p.grad.clone() for n, p in model.module.named_parameters() if p.grad is not None
            }
            results[name] = {"loss": loss / world, "grads": grads}
        if rank == 0:
            torch.save({"world": world, **results}, out_path)
        dist.barrier()  # no rank tears gloo down while another still talks
    finally:
        dist.destroy_process_group()
