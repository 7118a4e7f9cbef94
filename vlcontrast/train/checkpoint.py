"""Atomic, named-state checkpoints that never unpickle anything.

The trainer hands :func:`save` a dict of named stateful parts (model, objective, optimizer,
scheduler, data position, bad-data counts, RNG of every rank), as torchtitan's checkpointer
does: adding a part is one entry, not a new key in a save function. Layout of
``{output_dir}/checkpoints/step_{step:08d}/``:

* ``model.safetensors``: the model's weights (what inference loads, ``models/load.py``); under
  FSDP, ``sharded/`` instead: every rank's shards of the weights and the optimizer's tensors
  (``train/sharded_checkpoint.py``), written by all ranks into the staging directory;
* ``state.safetensors``: every tensor of every other part, keyed ``part/path``;
* ``state.json``: the step and every part's state with its tensors replaced by references
  (tuples, non-string keys and numpy arrays are tagged so they come back as they were);
* ``config.json`` (the resolved run config) and ``tokenizer/``.

Loading reads JSON and safetensors only, so a shared checkpoint cannot run code. Checkpoints
written before this format hold ``train_state.pt``; it is read with
``torch.load(weights_only=True)`` (numpy's RNG state allowed, nothing else), which refuses any
pickle that would call arbitrary code.

Everything is written into a hidden temporary directory, fsynced, then renamed into place; the
rename is the commit. A process killed mid-save leaves only a ``.tmp-*`` directory, which
``latest`` ignores and the next save removes, so the last good checkpoint is never replaced by a
partial one.
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file, save_model
from torch import nn

from vlcontrast import config as config_lib
from vlcontrast import distributed
from vlcontrast.models import manifest
from vlcontrast.models.load import (  # noqa: F401 (read_config re-exported for the trainer)
    WEIGHTS,
    architecture_files,
    load_weights,
    read_config,
)
from vlcontrast.models.torch_format import load_tensors_only
from vlcontrast.schema import ConfigError

_NAME = re.compile(r"^step_(\d{8})$")
STATE_JSON, STATE_TENSORS, LEGACY_STATE = "state.json", "state.safetensors", "train_state.pt"
FORMAT = 2


class CheckpointError(RuntimeError):
    """A checkpoint could not be written (the previous one is intact)."""


class Stateful(Protocol):
    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any) -> Any: ...


class RNGState:
    """The Python, numpy, torch and CUDA generators of every rank (a collective: every rank
    calls ``state_dict``); each rank gets its own back on load."""

    def state_dict(self) -> list[dict[str, Any]]:
        mine = {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }
        return distributed.all_gather_objects(mine)

    def load_state_dict(self, states: list[dict[str, Any]] | dict[str, Any]) -> None:
        if isinstance(states, dict):  # legacy checkpoints: rank 0's state only
            states = [states]
        rank = distributed.rank()
        if rank >= len(states):
            print(f"rank {rank}: the checkpoint has RNG states of {len(states)} rank(s); using 0's")
        state = states[rank if rank < len(states) else 0]
        python = state["python"]
        random.setstate((python[0], tuple(python[1]), python[2]))
        np.random.set_state(tuple(state["numpy"]))
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_tree(path: Path) -> None:
    for file in path.rglob("*"):
        if file.is_file():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())


def encode(value: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    """``value`` as JSON, its tensors moved into ``tensors`` under ``key``-based names."""
    if isinstance(value, torch.Tensor):
        tensors[key] = value.detach().cpu().contiguous().clone()
        return {"__tensor__": key}
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": str(value.dtype)}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return {"__tuple__": [encode(v, f"{key}/{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [encode(v, f"{key}/{i}", tensors) for i, v in enumerate(value)]
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: encode(v, f"{key}/{k}", tensors) for k, v in value.items()}
        return {
            "__items__": [
                [encode(k, f"{key}/k{i}", tensors), encode(v, f"{key}/{i}", tensors)]
                for i, (k, v) in enumerate(value.items())
            ]
        }
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(
        f"checkpoint part {key.split('/')[0]!r}: cannot store {type(value).__name__} at {key}"
    )


def decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value:
        return tensors[value["__tensor__"]]
    if "__ndarray__" in value:
        return np.array(value["__ndarray__"], dtype=value["dtype"])
    if "__tuple__" in value:
        return tuple(decode(v, tensors) for v in value["__tuple__"])
    if "__items__" in value:
        return {decode(k, tensors): decode(v, tensors) for k, v in value["__items__"]}
    return {k: decode(v, tensors) for k, v in value.items()}


def save(
    root: str | Path,
    step: int,
    model: nn.Module,
    parts: dict[str, Any],
    cfg: config_lib.Config,
    tokenizer: Any = None,
    keep: int = 2,
    weights: dict[str, torch.Tensor] | None = None,
    staged: Path | None = None,
) -> Path:
    """Write checkpoint ``step`` under ``root`` atomically; keep the newest ``keep``.

    ``parts`` maps names to state dicts (already taken, so collectives ran on every rank);
    ``weights``, the gathered weights of a sharded (FSDP) model, replace ``model``'s own;
    ``staged`` is the :func:`staging_dir` into which every rank already wrote its shards of
    the weights (``train/sharded_checkpoint.py``), which then replace ``model.safetensors``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if staged is None:
        _remove_stale(root)
    final = root / f"step_{step:08d}"
    tmp = staged or root / f".tmp-step_{step:08d}-{os.getpid()}"
    tensors: dict[str, torch.Tensor] = {}
    encoded = {name: encode(state, name, tensors) for name, state in parts.items()}
    try:
        tmp.mkdir(exist_ok=staged is not None)
        if weights is not None:
            save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp / WEIGHTS))
        elif staged is None:
            save_model(model, str(tmp / WEIGHTS))
        save_file(tensors, str(tmp / STATE_TENSORS))
        state = {"format": FORMAT, "step": step, "parts": encoded}
        (tmp / STATE_JSON).write_text(json.dumps(state) + "\n")
        config_lib.save(cfg, tmp / "config.json")
        for name, text in architecture_files(model).items():
            (tmp / name).write_text(text)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp / "tokenizer"))
        manifest.write(tmp, "single" if staged is None else "sharded")
        commit(tmp, final)
    except (OSError, RuntimeError, SafetensorError) as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_error(err, step, root, model, tensors) from None
    for stale in all_checkpoints(root)[:-keep]:
        shutil.rmtree(stale)
    return final


def _remove_stale(root: Path) -> None:
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def staging_dir(root: str | Path, step: int) -> Path:
    """Where every rank of an FSDP run writes its shards of checkpoint ``step`` (one name that
    all ranks know; a run directory has one writer)."""
    return Path(root) / f".tmp-step_{step:08d}-shards"


def begin_staging(root: str | Path, step: int) -> Path:
    """Rank 0, before the ranks write their shards: a fresh :func:`staging_dir`."""
    Path(root).mkdir(parents=True, exist_ok=True)
    _remove_stale(Path(root))
    staged = staging_dir(root, step)
    staged.mkdir()
    return staged


def commit(tmp: Path, final: Path) -> None:
    """fsync everything in ``tmp``, then rename it to ``final`` (the commit); an existing
    ``final`` (a step saved again after a resume, a checkpoint consolidated in place) is moved
    aside first and removed only after."""
    _fsync_tree(tmp)
    if final.exists():
        old = final.with_name(f".tmp-old-{final.name}-{os.getpid()}")
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old)
    else:
        tmp.rename(final)


def write_error(err: Exception, step: int, root: Path, model: nn.Module, tensors) -> Exception:
    """One message for a failed save; a full disk says so, with the size it needed."""
    text = str(err)
    full = getattr(err, "errno", None) == errno.ENOSPC or any(
        marker in text for marker in ("No space left", "StorageFull", "unexpected pos")
    )
    if not full:
        return CheckpointError(f"could not write checkpoint step {step} in {root}: {text[:300]}")
    values = [*model.state_dict().values(), *tensors.values()]
    size_mb = sum(v.numel() * v.element_size() for v in values) / 1e6
    return CheckpointError(
        f"no space left on device while writing checkpoint step {step} in {root} (needs about "
        f"{size_mb:.1f} MB); the partial checkpoint was removed and the previous one is intact. "
        f"Free space, then resume with train.resume=latest"
    )


def load_state(path: str | Path) -> dict[str, Any]:
    """``{"step": int, "parts": {name: state}}`` of a checkpoint, without unpickling code."""
    path = Path(path)
    if (path / STATE_JSON).is_file():
        try:
            state = json.loads((path / STATE_JSON).read_text())
            tensors = load_file(str(path / STATE_TENSORS))
        except (OSError, ValueError, SafetensorError) as err:
            raise ConfigError(f"this checkpoint is damaged: {path} ({err})") from None
        return {"step": state["step"], "parts": decode(state["parts"], tensors)}
    if (path / LEGACY_STATE).is_file():
        return _legacy_state(path / LEGACY_STATE)
    raise ConfigError(f"train.resume: {path} holds no training state ({STATE_JSON})")


def optimizer_group_sizes(path: str | Path) -> list[int] | None:
    """How many parameters each of the saved optimizer's groups holds (None: not recorded)."""
    try:
        state = json.loads((Path(path) / STATE_JSON).read_text())
        return [len(group["params"]) for group in state["parts"]["optimizer"]["param_groups"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _legacy_state(file: Path) -> dict[str, Any]:
    """A ``train_state.pt`` of the previous format, read with ``weights_only=True``."""
    allowed = [
        np.dtype,
        np.ndarray,
        type(np.dtype(np.uint32)),
        getattr(np, "_core", np).multiarray._reconstruct,
    ]
    saved = load_tensors_only(file, "train.resume", allowed)
    parts = {k: saved[k] for k in ("optimizer", "scheduler") if k in saved}
    parts["data"] = saved.get("position", {})
    parts["rng"] = saved["rng"]
    if "bad_data" in saved:
        parts["bad_data"] = saved["bad_data"]
    return {"step": saved["step"], "parts": parts}


def restore(path: str | Path, model: nn.Module, parts: dict[str, Stateful]) -> int:
    """Load the model and every part that the checkpoint holds; returns the step. Heads that
    an older layout kept in ``model.safetensors`` go to the ``objective`` part
    (``train/task_state.py``)."""
    from vlcontrast.train import fsdp, sharded_checkpoint
    from vlcontrast.train.task_state import MODEL_FILE

    layout = manifest.layout(path)
    saved = load_state(path)
    if layout == "sharded":  # weights and optimizer tensors come from the shards
        optimizer = parts["optimizer"]
        optimizer = getattr(optimizer, "optimizer", optimizer)  # fsdp.ShardedOptimizer's own
        sharded_checkpoint.load_shards(Path(path), model, optimizer, saved["parts"]["optimizer"])
        parts = {name: part for name, part in parts.items() if name != "optimizer"}
    elif fsdp.is_sharded(model):
        fsdp.load_full_model_state(model, Path(path) / WEIGHTS)
    else:
        heads = load_weights(path, model)
        if heads:
            moved = {MODEL_FILE + k: v for k, v in heads.items()}
            saved["parts"]["objective"] = {**saved["parts"].get("objective", {}), **moved}
    for name, part in parts.items():
        if name in saved["parts"]:
            part.load_state_dict(saved["parts"][name])
        elif name != "objective":  # objectives without state may be absent from old ones
            raise ConfigError(f"this checkpoint is damaged: {path} has no {name!r} state")
    return int(saved["step"])


def all_checkpoints(root: str | Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _NAME.match(p.name)]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def step_of(path: Path) -> int:
    return int(_NAME.match(path.name).group(1))


def latest(root: str | Path) -> Path | None:
    found = all_checkpoints(root)
    return found[-1] if found else None
