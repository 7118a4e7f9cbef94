"""Worker side of the distributed-equivalence tests (spawned by test_distributed_losses.py).

Each of W gloo processes takes its slice of one fixed global batch, wraps the same tiny two-tower
model in DDP, runs one forward/backward per case through the library's losses (and gradient
caching), and rank 0 saves the rank-averaged loss and the DDP-averaged gradients. The test compares
them with one process on the whole batch, using reference losses written in the test file.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from vlcontrast.losses import (
    gathered_clip_loss,
    gathered_siglip_loss,
    metric,
    miners,
    nt_xent_loss,
    supcon_loss,
)
from vlcontrast.losses.classify import classification_loss
from vlcontrast.losses.pairs import in_batch_negatives_loss
from vlcontrast.losses.swav import sinkhorn, swapped_prediction_loss
from vlcontrast.objectives.base import Objective
from vlcontrast.train.grad_cache import grad_cached_step

GLOBAL_BATCH = 12
UNEVEN = {1: [12], 2: [5, 7], 4: [2, 4, 3, 3]}


class TinyTowers(nn.Module):
    """Two small MLP towers in float64; ``logit_scale``/``logit_bias`` exist only where the loss
    uses them, so DDP runs with its production default (every parameter used)."""

    def __init__(self, scale: bool = True, bias: bool = False, dropout: float = 0.0):
        super().__init__()
        torch.manual_seed(0)
        self.img = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Dropout(dropout), nn.Linear(8, 5))
        self.txt = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Dropout(dropout), nn.Linear(8, 5))
        self.logit_scale = nn.Parameter(torch.tensor(1.5)) if scale else None
        self.logit_bias = nn.Parameter(torch.tensor(-2.0)) if bias else None
        self.double()

    def forward(self, images=None, input_ids=None, attention_mask=None):
        """The model contract: a dict with the embeddings and the scalars the model has."""
        out = {
            "img_emb": F.normalize(self.img(images), dim=-1),
            "txt_emb": F.normalize(self.txt(input_ids), dim=-1),
        }
        if self.logit_scale is not None:
            out["logit_scale"] = self.logit_scale.exp()
        if self.logit_bias is not None:
            out["logit_bias"] = self.logit_bias
        return out


def towers_for(loss_name: str, dropout: float = 0.0) -> TinyTowers:
    return TinyTowers(
        scale=loss_name.startswith(("clip", "siglip", "logistic", "classify")),
        bias=loss_name.startswith("siglip"),
        dropout=dropout,
    )


def global_batch() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return {
        "images": torch.randn(GLOBAL_BATCH, 6, generator=gen, dtype=torch.float64),
        "input_ids": torch.randn(GLOBAL_BATCH, 6, generator=gen, dtype=torch.float64),
        "labels": torch.tensor([0, 1, 2, 0, 1, 2, 3, 0, 3, 1, 2, 2]),
    }


class TowersObjective(Objective):
    """A task owning ``model``: its outputs -> one of the library's losses."""

    def __init__(self, loss_fn, model: nn.Module):
        super().__init__()
        self.loss_fn = loss_fn
        self.model = model

    def outputs(self, batch):
        out = self.model(images=batch["images"], input_ids=batch["input_ids"])
        names = {"img_emb": "img", "txt_emb": "txt", "logit_scale": "scale", "logit_bias": "bias"}
        return {short: out[name] for name, short in names.items() if name in out}

    def loss(self, outputs, batch):
        return {"loss": self.loss_fn(outputs, batch), "metrics": {}}


LOSSES = {
    "clip_local": lambda o, b: gathered_clip_loss(o["img"], o["txt"], o["scale"], local=True),
    "clip_global": lambda o, b: gathered_clip_loss(o["img"], o["txt"], o["scale"], local=False),
    "clip_tiled_local": lambda o, b: gathered_clip_loss(
        o["img"], o["txt"], o["scale"], local=True, tiled=True, tile_size=2
    ),
    "clip_tiled_global": lambda o, b: gathered_clip_loss(
        o["img"], o["txt"], o["scale"], local=False, tiled=True, tile_size=5
    ),
    "clip_auto": lambda o, b: gathered_clip_loss(  # tiles: the global batch reaches 12
        o["img"], o["txt"], o["scale"], tiled_from=12, tile_size=2
    ),
    "siglip": lambda o, b: gathered_siglip_loss(o["img"], o["txt"], o["scale"], o["bias"]),
    "nt_xent": lambda o, b: nt_xent_loss(o["img"], o["txt"], temperature=0.5),
    "supcon": lambda o, b: supcon_loss(
        torch.cat([o["img"], o["txt"]]), torch.cat([b["labels"], b["labels"]]), temperature=0.2
    ),
    # metric learning: both towers' rows as two views of each labelled sample
    "contrastive": lambda o, b: metric.contrastive_loss(*views(o, b), 0.1, 1.2),
    "triplet_semi_hard": lambda o, b: semi_hard_triplet_loss(*views(o, b), margin=0.5),
    "npair": lambda o, b: metric.npair_loss(o["img"], o["txt"], l2_reg=0.02),
    "logistic": lambda o, b: metric.logistic_loss(*views(o, b), o["scale"], torch.tensor(-1.0)),
    "multi_similarity": lambda o, b: mined_multi_similarity(*views(o, b)),
    # text pairs: image tower rows as anchors, text tower rows as positives
    "pairs": lambda o, b: in_batch_negatives_loss(o["img"], o["txt"], temperature=0.3),
    "pairs_symmetric": lambda o, b: in_batch_negatives_loss(
        o["img"], o["txt"], temperature=0.3, symmetric=True
    ),
    "pairs_negatives": lambda o, b: in_batch_negatives_loss(
        o["img"], o["txt"], hard_negatives(o), temperature=0.3, symmetric=True
    ),
    # fine-tuning through a fixed head, both towers' rows classified (DDP needs every weight
    # used); class 3 is not in the head: unlabelled rows
    # SwAV: the two towers' rows as two crops, scored against fixed prototypes; the codes come
    # from Sinkhorn over the global batch
    "swav": lambda o, b: swav(o["img"] @ head().T, o["txt"] @ head().T),
    "classify": lambda o, b: classification_loss(
        o["scale"] * views(o, b)[0] @ head().T, views(o, b)[1]
    ),
}


def swav(scores_a: torch.Tensor, scores_b: torch.Tensor) -> torch.Tensor:
    codes = {0: sinkhorn(scores_a, eps=0.5), 1: sinkhorn(scores_b, eps=0.5)}
    return swapped_prediction_loss([scores_a, scores_b], codes, temperature=0.2)


def head() -> torch.Tensor:
    """A fixed (3, 5) head of unit rows: the zero-shot head of finetune, for three classes."""
    gen = torch.Generator().manual_seed(7)
    return F.normalize(torch.randn(3, 5, generator=gen, dtype=torch.float64), dim=-1)


def hard_negatives(o: dict) -> torch.Tensor:
    """(B, 2, D) negatives made from each row's own outputs (so a rank's slice is its rows')."""
    return torch.stack([F.normalize(o["img"] + o["txt"], dim=-1), o["txt"].flip(-1)], dim=1)


def views(o: dict, b: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Both towers' embeddings as (2B, D) rows and their labels (the batch's, twice)."""
    return torch.cat([o["img"], o["txt"]]), torch.cat([b["labels"], b["labels"]])


def semi_hard_triplet_loss(emb, labels, margin):
    """Semi-hard triplets mined on the gathered batch, then the triplet loss over them."""
    g = metric.gather(emb, labels)
    dist = metric.distances(g.emb, g.emb_all).detach()
    return metric.triplet_loss(
        emb, labels, miners.semi_hard_triplets(dist, g.positive, g.negative, margin), margin
    )


def mined_multi_similarity(emb, labels):
    g = metric.gather(F.normalize(emb, dim=-1), labels)
    sim = (g.emb @ g.emb_all.T).detach()
    return metric.multi_similarity_loss(
        emb, labels, miners.multi_similarity_pairs(sim, g.positive, g.negative)
    )


# (case name, loss, grad-cache steps, uneven split)
CASES = [(name, name, 1, False) for name in LOSSES] + [
    ("clip_local_gradcache", "clip_local", 2, False),
    ("clip_tiled_local_gradcache", "clip_tiled_local", 3, False),
    ("siglip_gradcache", "siglip", 2, False),
    ("clip_local_uneven", "clip_local", 1, True),
    ("clip_tiled_local_uneven", "clip_tiled_local", 1, True),
    ("clip_auto_uneven", "clip_auto", 1, True),
    ("siglip_uneven", "siglip", 1, True),
    ("supcon_uneven", "supcon", 1, True),
    ("triplet_semi_hard_uneven", "triplet_semi_hard", 1, True),
    ("multi_similarity_uneven", "multi_similarity", 1, True),
    ("triplet_semi_hard_gradcache", "triplet_semi_hard", 2, False),
    ("pairs_negatives_uneven", "pairs_negatives", 1, True),
    ("pairs_gradcache", "pairs", 2, False),
    ("swav_uneven", "swav", 1, True),
    ("swav_gradcache", "swav", 2, False),
    ("classify_uneven", "classify", 1, True),  # rank 2 of 4 holds both unlabelled rows
    ("classify_gradcache", "classify", 2, False),
]


def local_slice(batch: dict, world: int, rank: int, uneven: bool) -> dict:
    sizes = UNEVEN[world] if uneven else [GLOBAL_BATCH // world] * world
    start = sum(sizes[:rank])
    return {k: v[start : start + sizes[rank]] for k, v in batch.items()}


def run_case(task: nn.Module, batch: dict, steps: int) -> torch.Tensor:
    return grad_cached_step(task, batch, steps)["loss"].detach()


def worker(rank: int, world: int, init_file: str, out_path: str) -> None:
    torch.set_num_threads(1)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        batch = global_batch()
        results = {}
        for case, loss_name, steps, uneven in CASES:
            model = towers_for(loss_name)
            task = DistributedDataParallel(TowersObjective(LOSSES[loss_name], model))
            loss = run_case(task, local_slice(batch, world, rank, uneven), steps)
            dist.all_reduce(loss)
            grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
            gathered = [None] * world
            dist.all_gather_object(gathered, grads)
            same = all(torch.equal(g[n], grads[n]) for g in gathered for n in grads)
            results[case] = {"loss": loss / world, "grads": grads, "ranks_agree": same}
        if rank == 0:
            torch.save(results, out_path)
        dist.barrier()  # no rank tears gloo down while another still talks
    finally:
        dist.destroy_process_group()
