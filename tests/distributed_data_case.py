"""Worker side of the 2-rank coverage test (spawned by test_data.py): each gloo process reads one
epoch of its share with 2 dataloader workers; rank 0 writes every rank's keys."""

from __future__ import annotations

import contextlib
import json
import os

import torch
import torch.distributed as dist


@contextlib.contextmanager
def process_group(rank: int, world: int, init_file: str):
    torch.set_num_threads(1)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        yield
        dist.barrier()  # no rank tears gloo down while another still talks
    finally:
        dist.destroy_process_group()


def save_gathered(value, rank: int, world: int, out: str) -> None:
    gathered = [None] * world
    dist.all_gather_object(gathered, value)
    if rank == 0:
        with open(out, "w") as f:
            json.dump(gathered, f)


def worker(rank: int, world: int, init_file: str, shards: str, out: str) -> None:
    from tests.data_helpers import dataset, one_epoch
    from vlcontrast.config import TextTowerConfig
    from vlcontrast.data.bad_data import BadData
    from vlcontrast.models.text_tower import load_tokenizer

    with process_group(rank, world, init_file):
        tokenizer = load_tokenizer(TextTowerConfig(tokenizer=os.environ["VLC_TEST_TOKENIZER"]))
        keys = one_epoch(dataset(shards, tokenizer, batch=1, shuffle_buffer=4), 2, 2, BadData())
        save_gathered(keys, rank, world, out)


def bad_data_worker(rank: int, world: int, init_file: str, out: str) -> None:
    """Rank 0 alone is over the limit in one case and every rank is in the other: the decision
    must be the same on every rank, taken on the totals."""
    from vlcontrast.data.bad_data import BadData
    from vlcontrast.data.shards import DataError

    with process_group(rank, world, init_file):
        outcomes = []
        for skipped_on_rank0 in (15, 40):  # totals: 15/200 = 7.5%, 40/200 = 20%; limit 10%
            bad = BadData(max_fraction=0.1, min_samples=10)
            bad.add({"seen": 100, "skipped": [("corrupt_image", f"r{rank}.tar", 0)]})
            if rank == 0:
                bad.add({"seen": 0, "skipped": [("corrupt_image", "r0.tar", skipped_on_rank0)]})
            try:
                bad.check_all_ranks()
                outcomes.append("ok")
            except DataError:
                outcomes.append("stop")
        save_gathered(outcomes, rank, world, out)
