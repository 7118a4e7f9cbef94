"""``vlcontrast checkpoint consolidate``: a sharded checkpoint of an FSDP run
(``train/sharded_checkpoint.py``) rewritten as the single-file layout of ``train/checkpoint.py``
(``model.safetensors``, the optimizer's full state in ``state.safetensors``), to share the
weights as one file (training, eval and search read the shards as they are). Reads the shards
in one process, so it needs host memory for the whole model and optimizer state.

Before anything is written, the weights are checked against the model that the checkpoint's
config builds (on the meta device, so nothing is allocated): a tensor missing from the shards,
or one of another shape, stops it with a message instead of a checkpoint that lacks it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from vlcontrast.models import manifest, sharded_weights
from vlcontrast.models.build import build_model
from vlcontrast.models.load import WEIGHTS, read_config, self_contained
from vlcontrast.models.sharded_weights import MODEL, OPTIM, SHARDS
from vlcontrast.schema import ConfigError
from vlcontrast.train import checkpoint
from vlcontrast.train.sharded_checkpoint import full_optimizer_state


def consolidate(path: str | Path, out: str | Path | None = None) -> Path:
    """Write sharded checkpoint ``path`` as a single-file one at ``out`` (default: in place),
    through a staging directory renamed into place. Returns the written directory."""
    path = Path(path)
    if manifest.layout(path) != "sharded":
        raise ConfigError(f"checkpoint consolidate: {path} is not a sharded checkpoint")
    index = sharded_weights.read_index(path / SHARDS)  # read and checked once
    weights = sharded_weights.read_tensors(path, MODEL, index)
    optim = sharded_weights.read_tensors(path, OPTIM, index)
    optim.update({k[len(OPTIM) :]: v for k, v in index.values.items() if k.startswith(OPTIM)})
    return write_single(path, out, weights, optim)


def check_complete(path: Path, weights: dict[str, torch.Tensor]) -> None:
    """Every tensor of the model that ``path``'s config builds is in ``weights``, shaped alike."""
    cfg = self_contained(read_config(path), path, allow_download=False)
    with torch.device("meta"):
        wanted = {k: tuple(v.shape) for k, v in build_model(cfg).state_dict().items()}
    missing = sorted(set(wanted) - set(weights))
    unexpected = sorted(
        k for k in set(weights) - set(wanted) if not k.startswith("text.encoder.pooler.")
    )
    wrong = sorted(k for k in set(wanted) & set(weights) if tuple(weights[k].shape) != wanted[k])
    if missing or unexpected or wrong:
        raise ConfigError(
            f"this checkpoint is damaged: {path} does not hold its model's weights (missing "
            f"{missing[:5]}, unexpected {unexpected[:5]}, other shapes {wrong[:5]}); nothing "
            f"was written"
        )


def write_single(
    path: Path, out: str | Path | None, weights: dict[str, torch.Tensor], optim: dict[str, Any]
) -> Path:
    """``path``'s checkpoint with ``weights`` in ``model.safetensors`` and the optimizer's full
    state from ``optim`` (flat ``{name}/{slot}`` keys), at ``out`` (default: in place)."""
    check_complete(path, weights)
    out = Path(out) if out is not None else path
    if out != path and out.exists():
        raise ConfigError(f"--out: {out} exists; choose a new directory")
    saved = checkpoint.load_state(path)
    parts = saved["parts"]
    parts["optimizer"] = full_optimizer_state(optim, parts["optimizer"])
    tensors: dict = {}
    encoded = {name: checkpoint.encode(state, name, tensors) for name, state in parts.items()}
    state = {"format": checkpoint.FORMAT, "step": saved["step"], "parts": encoded}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    skip = {SHARDS, checkpoint.STATE_JSON, checkpoint.STATE_TENSORS, manifest.MANIFEST}
    try:  # the config, tokenizer and text config as they are; weights and state rewritten
        shutil.copytree(
            path, tmp, ignore=lambda d, names: skip & set(names) if d == str(path) else []
        )
        save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp / WEIGHTS))
        save_file(tensors, str(tmp / checkpoint.STATE_TENSORS))
        (tmp / checkpoint.STATE_JSON).write_text(json.dumps(state) + "\n")
        manifest.write(tmp, "single")
        checkpoint.commit(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
