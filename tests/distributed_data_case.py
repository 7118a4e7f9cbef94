"""Worker side of the 2-rank coverage test (spawned by test_data.py): each gloo process reads one
epoch of its share with 2 dataloader workers; rank 0 writes every rank's keys."""

from __future__ import annotations

import json
import os

import torch
import torch.distributed as dist


def worker(rank: int, world: int, init_file: str, shards: str, out: str) -> None:
    from tests.data_helpers import dataset, one_epoch
    from vlcontrast.config import TextTowerConfig
    from vlcontrast.data.bad_data import BadData
    from vlcontrast.models.text_tower import load_tokenizer

    torch.set_num_threads(1)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        tokenizer = load_tokenizer(TextTowerConfig(tokenizer=os.environ["VLC_TEST_TOKENIZER"]))
        keys = one_epoch(dataset(shards, tokenizer, batch=1, shuffle_buffer=4), 2, 2, BadData())
        gathered = [None] * world
        dist.all_gather_object(gathered, keys)
        if rank == 0:
            with open(out, "w") as f:
                json.dump(gathered, f)
    finally:
        dist.destroy_process_group()
