"""FSDP2 (``train.fsdp``): torch's ``fully_shard`` instead of DDP, for towers that do not fit one
device. One FSDP unit per transformer block of each tower (timm ``blocks``, transformers
``layers``/``layer``) plus the root for the rest, so parameters, gradients and optimizer state
are sharded across ranks and gathered one block at a time.

Checkpoints are sharded by default (``train/sharded_checkpoint.py``). With
``train.sharded_checkpoints=false`` they hold the full state in the usual files (weights in
``model.safetensors``, the optimizer in ``state.safetensors``), gathered here with
``torch.distributed.checkpoint``'s state-dict functions and loaded back onto the shards: the
same single files as a DDP run's. Evaluation
gathers every unit first (ranks embed different numbers of batches, so a forward must not
issue collectives) and shards them again after.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlcontrast import distributed
from vlcontrast.models.blocks import block_lists


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def shard(model: nn.Module, device: torch.device) -> nn.Module:
    """``fully_shard`` every transformer block, then the root, over all ranks."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    model.to(device)
    mesh = init_device_mesh(device.type, (distributed.world_size(),))
    for blocks in list(block_lists(model)):
        for block in blocks:
            fully_shard(block, mesh=mesh)
    # fully_shard takes no 0-d parameters (logit_scale, logit_bias): they stay whole on every
    # rank, and their gradient is averaged over ranks as DDP would
    scalars = {p for p in model.parameters() if p.ndim == 0}
    fully_shard(model, mesh=mesh, ignored_params=scalars)
    for param in scalars:
        param.register_post_accumulate_grad_hook(_average_grad)
    return model


def _average_grad(param: torch.Tensor) -> None:
    # averaging an already averaged part again leaves it as it is, so micro-batches are fine
    distributed.all_reduce(param.grad).div_(distributed.world_size())


def _options(**kwargs):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kwargs)


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The gathered weights, on the CPU (every rank takes part; rank 0 gets them)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options(cpu_offload=True))


def load_full_model_state(model: nn.Module, path: Path) -> None:
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(model, load_file(str(path)), options=_options())


class ShardedOptimizer:
    """The checkpoint part of an optimizer over sharded parameters: its full state dict (keyed
    by parameter name) out, and back onto this rank's shards."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer):
        self.model, self.optimizer = model, optimizer

    def __getattr__(self, name: str) -> Any:  # param_groups etc. for apply_settings
        return getattr(self.optimizer, name)

    def state_dict(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return get_optimizer_state_dict(self.model, self.optimizer, options=_options())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        set_optimizer_state_dict(self.model, self.optimizer, state, options=_options())


@contextmanager
def unsharded(model: nn.Module):
    """Every unit's parameters gathered, and kept so through forwards, for evaluation: each rank
    embeds its own share of the data (a different number of batches), so no forward may issue
    a collective. A no-op for unsharded models."""
    if not is_sharded(model):
        yield model
        return
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    model.set_reshard_after_forward(False)
    for unit in units:
        unit.unshard()
    try:
        yield model
    finally:
        for unit in units:
            unit.reshard()
        model.set_reshard_after_forward(True)


def check_task(task: nn.Module, name: str) -> None:
    """FSDP2 shards the shared model; a task that trains heads of its own is refused."""
    from vlcontrast.schema import ConfigError

    own = [n for n, p in task.named_parameters() if p.requires_grad and not n.startswith("model.")]
    if own:
        raise ConfigError(
            f"train.fsdp: objective {name!r} trains heads of its own ({own[0]}, ...), which FSDP "
            f"does not shard here; train it with DDP (train.fsdp=false)"
        )
