"""Sharded checkpoints of FSDP runs (``train.fsdp``, ``train.sharded_checkpoints``): each rank
writes its own pieces of the weights and of the optimizer state with
``torch.distributed.checkpoint`` into the checkpoint's ``sharded/`` directory, so no rank ever
holds the whole model (torchtitan's checkpointer does the same). The rest of the training state
(data position, RNG, scheduler, the optimizer's hyper-parameters) is small and stays in
``state.json`` / ``state.safetensors`` as in every checkpoint (``train/checkpoint.py``), which
also makes the directory atomic: all ranks write into its staging directory, then rank 0
renames it into place.

Loading reshards: a run resumes on any number of ranks, and evaluation, search and export read
the weights in one process (``models/sharded_weights.py``). ``train/consolidate.py`` turns a
sharded checkpoint into the single-file layout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlcontrast.models import sharded_weights
from vlcontrast.models.sharded_weights import MODEL, OPTIM, SHARDS
from vlcontrast.schema import ConfigError


class ShardWriteError(RuntimeError):
    """A rank could not write its shards (the staging directory is left for the next save to
    remove; the previous checkpoint is intact)."""


def _flat(model_state: dict[str, Any], optim_state: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One flat dict of the sharded tensors (keys ``model/{name}``, ``optim/{name}/{state}``);
    the values are the state dicts' own tensors, so loading into it loads into them."""
    flat = {MODEL + name: value for name, value in model_state.items()}
    for name, states in optim_state.items():
        flat.update({f"{OPTIM}{name}/{key}": value for key, value in states.items()})
    return flat


def _sharded_states(model: nn.Module, optimizer: torch.optim.Optimizer):
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    return get_model_state_dict(model), get_optimizer_state_dict(model, optimizer)


def save_shards(model: nn.Module, optimizer: torch.optim.Optimizer, directory: Path) -> dict:
    """Every rank writes its shards of the weights and optimizer state into ``directory`` (a
    collective). Returns the optimizer's part for ``state.json``: its parameter groups."""
    import torch.distributed.checkpoint as dcp

    model_state, optim_state = _sharded_states(model, optimizer)
    try:
        with sharded_weights.single_process_ok():
            dcp.save(
                _flat(model_state, optim_state["state"]),
                storage_writer=dcp.FileSystemWriter(str(directory)),
            )
    except dcp.CheckpointException as err:  # one rank's error (a full disk), on every rank
        raise ShardWriteError(str(err).strip().splitlines()[-1][:300]) from None
    return {"param_groups": optim_state["param_groups"]}


def load_shards(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, part: dict) -> None:
    """Read a sharded checkpoint onto this run's model and optimizer, whatever the number of
    ranks either run has (a collective under a process group; FSDP or not)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    model_state, optim_state = _sharded_states(model, optimizer)
    try:
        with sharded_weights.single_process_ok():
            dcp.load(
                _flat(model_state, optim_state["state"]),
                storage_reader=sharded_weights.reader(path / SHARDS),
            )
    except dcp.CheckpointException as err:  # one rank's error, re-raised on every rank
        first = str(err).strip().splitlines()[-1][:300]
        raise ConfigError(f"train.resume: {path} does not fit this model ({first})") from None
    set_model_state_dict(model, model_state)
    optim_state["param_groups"] = part["param_groups"]
    set_optimizer_state_dict(model, optimizer, optim_state)


def full_optimizer_state(tensors: dict[str, torch.Tensor], part: dict) -> dict[str, Any]:
    """The optimizer's state as ``get_optimizer_state_dict(full_state_dict=True)`` gives it
    (keyed by parameter name, which ``Optimizer.load_state_dict`` accepts as well)."""
    state: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        name, _, slot = key.rpartition("/")
        state.setdefault(name, {})[slot] = value
    return {"state": state, "param_groups": part["param_groups"]}
