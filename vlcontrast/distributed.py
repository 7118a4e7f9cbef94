"""Process-group helpers that degrade gracefully: without a process group, rank 0 of 1.

Every path therefore runs unchanged in one CPU process. The differentiable all-gather for the
losses arrives with the distributed-loss issue and will live here.
"""

from __future__ import annotations

import torch.distributed as dist


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    return rank() == 0
