"""Worker side of the FSDP test (spawned by test_fsdp.py): each gloo process runs the real
training loop (``train(cfg)``) as torchrun would start it (env:// rendezvous)."""

from __future__ import annotations

import os

import torch


def worker(rank: int, world: int, init_file: str, port: int, overrides: list[str], crash: int):
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        GLOO_SOCKET_IFNAME="lo",
    )
    torch.set_num_threads(1)
    from vlcontrast import config as config_lib
    from vlcontrast.train import loop

    if crash:  # a preemption after `crash` batches, on every rank at the same point
        real = loop.iterate_epochs

        def crashing(*args, **kwargs):
            for index, batch in enumerate(real(*args, **kwargs)):
                if index == crash:
                    raise SystemExit(0)
                yield batch

        loop.iterate_epochs = crashing
    loop.train(config_lib.load(None, overrides))
