"""Worker side of the class-balanced coverage test (spawned by test_balanced.py): each gloo
process reads one epoch of its P x K batches with 2 dataloader workers; rank 0 writes every
rank's batches (keys and labels)."""

from __future__ import annotations

from tests.distributed_data_case import process_group, save_gathered


def worker(rank: int, world: int, init_file: str, pattern: str, out: str) -> None:
    from tests.test_balanced import balanced_dataset, epoch_batches

    with process_group(rank, world, init_file):
        ds = balanced_dataset(pattern)
        save_gathered(epoch_batches(ds, workers=2, streams=2), rank, world, out)
