"""Sharded checkpoints of FSDP runs (``train.fsdp``, ``train.sharded_checkpoints``): each rank
writes its own pieces of the weights and of the optimizer state into the checkpoint's
``sharded/`` directory, so no rank ever holds the whole model (torchtitan's checkpointer does the
same). The rest of the training state (data position, RNG, scheduler, the optimizer's
hyper-parameters) is small and stays in ``state.json`` / ``state.safetensors`` as in every
checkpoint (``train/checkpoint.py``), which also makes the directory atomic: all ranks write
into its staging directory, then rank 0 renames it into place.

The format is safetensors plus a JSON index (``models/sharded_weights.py``), not
``torch.distributed.checkpoint``'s files: their ``.metadata`` is a pickle, and its load planner
reads any item declared as bytes with an unrestricted ``torch.load``, so a shared
checkpoint could run code. A piece is a DTensor's local shard at its global offset (torch's own
``compute_local_shape_and_global_offset``); a tensor that every rank holds whole is written by
rank 0. Loading reshards: each rank reads the region it now owns from whichever pieces overlap
it, so a run resumes on any number of ranks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlcontrast import distributed
from vlcontrast.models import sharded_weights
from vlcontrast.models.sharded_weights import INDEX, MODEL, OPTIM, SHARDS
from vlcontrast.schema import ConfigError


class ShardWriteError(RuntimeError):
    """A rank could not write its shards (the staging directory is left for the next save to
    remove; the previous checkpoint is intact)."""


def _flat(model_state: dict[str, Any], optim_state: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One flat dict of the sharded state (keys ``model/{name}``, ``optim/{name}/{slot}``);
    the values are the state dicts' own tensors, so loading into them loads into the state."""
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


def local_piece(value: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """This rank's piece of ``value`` and its offset in the full tensor."""
    from torch.distributed.tensor import DTensor

    if not isinstance(value, DTensor):
        return value, (0,) * value.ndim
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    shape, offset = compute_local_shape_and_global_offset(
        value.shape, value.device_mesh, value.placements
    )
    local = value.to_local()
    if tuple(local.shape) != tuple(shape):
        raise RuntimeError(f"a shard of shape {tuple(local.shape)} where {shape} was expected")
    return local, tuple(offset)


def save_shards(model: nn.Module, optimizer: torch.optim.Optimizer, directory: Path) -> dict:
    """Every rank writes its pieces of the weights and optimizer state into ``directory`` (a
    collective); rank 0 writes the index. Returns the optimizer's part for ``state.json``: its
    parameter groups."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file
    from torch.distributed.tensor import DTensor

    model_state, optim_state = _sharded_states(model, optimizer)
    rank, file = distributed.rank(), sharded_weights.rank_file(distributed.rank())
    pieces: dict[str, torch.Tensor] = {}
    entries: dict[str, dict] = {}
    values: dict[str, Any] = {}
    for key, value in _flat(model_state, optim_state["state"]).items():
        if not isinstance(value, torch.Tensor):
            values[key] = value  # a plain number of the optimizer's state, the same on all ranks
            continue
        local, offset = local_piece(value)
        entries[key] = {"shape": list(value.shape), "dtype": str(value.dtype)}
        if local.numel() and (isinstance(value, DTensor) or rank == 0):
            pieces[key] = local.detach().cpu().contiguous()
            entries[key]["piece"] = {
                "file": file,
                "offset": list(offset),
                "shape": list(local.shape),
            }
    error = ""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        save_file(pieces, str(directory / file))
    except (OSError, SafetensorError, RuntimeError) as err:
        error = f"rank {rank}: {str(err).strip()[:300]}"
    written = distributed.all_gather_objects({"entries": entries, "error": error})
    errors = [w["error"] for w in written if w["error"]]
    if not errors:  # every rank wrote its pieces: rank 0 writes the index and tells the others
        failed = ""
        if rank == 0:
            try:
                _write_index(directory, written, values)
            except OSError as err:
                failed = f"rank 0: {err}"
        errors = [e for e in distributed.all_gather_objects(failed)[:1] if e]
    if errors:
        raise ShardWriteError("; ".join(errors))
    return {"param_groups": optim_state["param_groups"]}


def _write_index(directory: Path, written: list[dict], values: dict[str, Any]) -> None:
    tensors: dict[str, dict] = {}
    for rank_entries in written:
        for key, entry in rank_entries["entries"].items():
            merged = tensors.setdefault(key, {"shape": entry["shape"], "dtype": entry["dtype"]})
            merged.setdefault("pieces", [])
            piece = entry.get("piece")
            if piece and all(p["offset"] != piece["offset"] for p in merged["pieces"]):
                merged["pieces"].append(piece)  # a replicated piece once
    index = {
        "format": sharded_weights.FORMAT,
        "files": [sharded_weights.rank_file(r) for r in range(len(written))],
        "tensors": tensors,
        "values": values,
    }
    (directory / INDEX).write_text(json.dumps(index) + "\n")


def load_shards(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, part: dict) -> None:
    """Read a sharded checkpoint onto this run's model and optimizer, whatever the number of
    ranks either run has (every rank reads its own region; FSDP or not)."""
    from torch.distributed.checkpoint.state_dict import (
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    model_state, optim_state = _sharded_states(model, optimizer)
    index = sharded_weights.read_index(path / SHARDS)
    flat = _flat(model_state, optim_state["state"])
    missing = [k for k in flat if k not in index.tensors and k not in index.values]
    if missing:
        raise ConfigError(
            f"train.resume: {path} does not fit this model ({len(missing)} of its tensors are "
            f"missing, e.g. {missing[:3]})"
        )
    with sharded_weights.Pieces(index) as pieces:
        for key, value in flat.items():
            if not isinstance(value, torch.Tensor):
                name, _, slot = key[len(OPTIM) :].rpartition("/")
                optim_state["state"][name][slot] = index.values[key]
                continue
            entry = index.tensors[key]
            if tuple(value.shape) != entry.shape or value.dtype != entry.dtype:
                raise ConfigError(
                    f"train.resume: {path} does not fit this model ({key} is {entry.shape} "
                    f"{entry.dtype} there, {tuple(value.shape)} {value.dtype} here)"
                )
            local, offset = local_piece(value)
            if local.numel():
                pieces.read_into(key, local, offset)
    set_model_state_dict(model, model_state)
    optim_state["param_groups"] = part["param_groups"]
    set_optimizer_state_dict(model, optimizer, optim_state)


def full_optimizer_state(tensors: dict[str, Any], part: dict) -> dict[str, Any]:
    """The optimizer's state as ``get_optimizer_state_dict(full_state_dict=True)`` gives it
    (keyed by parameter name, which ``Optimizer.load_state_dict`` accepts as well)."""
    state: dict[str, dict[str, Any]] = {}
    for key, value in tensors.items():
        name, _, slot = key.rpartition("/")
        state.setdefault(name, {})[slot] = value
    return {"state": state, "param_groups": part["param_groups"]}
