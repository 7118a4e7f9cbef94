"""Worker side of the distributed dense-evaluation test (spawned by test_dense_distributed.py):
each gloo process decodes and encodes its share of the masked shards, and every rank ends with
the whole set (``masked_features``), or labels its share of the held-out set (the dense
evaluators); rank 0 saves what it holds, and whether every rank holds the same."""

from __future__ import annotations

import os
from types import SimpleNamespace

import torch
import torch.distributed as dist

from vlcontrast import distributed
from vlcontrast.data.image import CropResize
from vlcontrast.eval import dense_knn as dk
from vlcontrast.eval.dense_linear import dense_linear

# max_samples of the held-out set: all; the first sample only (the other ranks score none);
# the first 7, cut among the ranks
CAPS = (0, 1, 7)


class PatchConv(torch.nn.Module):
    """A 4-px patchify conv standing in for a backbone's feature map; the same weights in
    every process."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 4, stride=4)

    def forward(self, images, feature_map=True):
        return {"img_map": self.conv(images.float() / 255)}


def read(pattern: str, max_samples: int) -> dict:
    """``masked_features`` of ``pattern`` in batches of 4, and dense kNN's and the linear
    probe's metrics, confusion matrices and example predictions with the same shards as
    training and held-out sets (each rank scoring its share of the held-out images)."""
    model, transform = PatchConv(), CropResize(32, "center")
    out = dk.masked_features(model, "cpu", transform, pattern, max_samples, batch_size=4)
    spec = SimpleNamespace(
        train_data=pattern,
        data=pattern,
        max_samples=max_samples,
        k=5,
        temperature=0.1,
        classes="",
        weight_decays=[1e-3, 1e-1],  # a sweep: validation images drawn over every rank's
        val_fraction=0.2,
    )
    knn = dk.dense_knn(model, "cpu", transform, spec, batch_size=4)
    linear = dense_linear(model, "cpu", transform, spec, batch_size=4)
    scored = {
        name: {key: result[key] for key in ("metrics", "confusion", "examples", "skipped")}
        for name, result in (("knn", knn), ("linear", linear))
    }
    return {**out, **scored}


def bank_rows(pattern: str) -> int:
    """How many training images' patches this rank holds for dense kNN: its share only."""
    spec = SimpleNamespace(train_data=pattern, data=pattern, max_samples=0, classes="")
    model, transform = PatchConv(), CropResize(32, "center")
    sets = dk.dense_sets(model, "cpu", transform, spec, batch_size=4, whole_train=False)
    return len(sets["train_feat"])


def count_linear_rows() -> list[int]:
    """From now on, the training images the linear probe's ``dense_sets`` leaves this rank
    with, one entry a call."""
    from vlcontrast.eval import dense_linear as module

    held, sets = [], module.dense_sets

    def counted(*args, **kwargs):
        out = sets(*args, **kwargs)
        held.append(len(out["train_feat"]))
        return out

    module.dense_sets = counted
    return held


def rows_of(rank: int) -> torch.Tensor:
    """Rank ``rank``'s rows for the chunked gather: rank + 3 rows of (rank, row) pairs."""
    return torch.stack([torch.full((rank + 3,), rank), torch.arange(rank + 3)], dim=1)


def worker(rank: int, world: int, init_file: str, pattern: str, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        linear_rows = count_linear_rows()
        results = {cap: read(pattern, cap) for cap in CAPS}
        digest = {
            cap: (r["feat"].sum().item(), r["masks"].sum().item()) for cap, r in results.items()
        }
        everyone = [None] * world
        dist.all_gather_object(everyone, digest)
        results["ranks_agree"] = all(d == digest for d in everyone)
        # uneven rows (rank r holds r + 3), gathered 2 rows at a time
        sizes = [r + 3 for r in range(world)]
        mine = rows_of(rank)
        results["rows"] = distributed.all_gather_rows(mine, sizes, "cpu", chunk=2)
        results["bank_rows"] = distributed.all_gather_objects(bank_rows(pattern))
        results["linear_rows"] = distributed.all_gather_objects(linear_rows)
        if rank == 0:
            torch.save(results, out)
        dist.barrier()  # no rank tears gloo down while another still talks
    finally:
        dist.destroy_process_group()
