"""``vlcontrast checkpoint consolidate``: a sharded checkpoint of an FSDP run
(``train/sharded_checkpoint.py``) rewritten as the single-file layout of ``train/checkpoint.py``
(``model.safetensors``, the optimizer's full state in ``state.safetensors``), to share the
weights as one file (training, eval and search read the shards as they are). Reads the shards
in one process, so it needs host memory for the whole model and optimizer state.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from safetensors.torch import save_file

from vlcontrast.models import sharded_weights
from vlcontrast.models.load import WEIGHTS
from vlcontrast.models.sharded_weights import MODEL, OPTIM, SHARDS
from vlcontrast.schema import ConfigError
from vlcontrast.train import checkpoint
from vlcontrast.train.sharded_checkpoint import full_optimizer_state


def consolidate(path: str | Path, out: str | Path | None = None) -> Path:
    """Write sharded checkpoint ``path`` as a single-file one at ``out`` (default: in place),
    through a staging directory renamed into place. Returns the written directory."""
    path = Path(path)
    if not sharded_weights.is_sharded(path):
        raise ConfigError(f"checkpoint consolidate: {path} is not a sharded checkpoint")
    out = Path(out) if out is not None else path
    if out != path and out.exists():
        raise ConfigError(f"--out: {out} exists; choose a new directory")
    saved = checkpoint.load_state(path)
    parts = saved["parts"]
    weights = sharded_weights.read_tensors(path, MODEL)
    parts["optimizer"] = full_optimizer_state(
        sharded_weights.read_tensors(path, OPTIM), parts["optimizer"]
    )
    tensors: dict = {}
    encoded = {name: checkpoint.encode(state, name, tensors) for name, state in parts.items()}
    manifest = {"format": checkpoint.FORMAT, "step": saved["step"], "parts": encoded}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    skip = {SHARDS, checkpoint.STATE_JSON, checkpoint.STATE_TENSORS}
    try:  # the config, tokenizer and text config as they are; weights and state rewritten
        shutil.copytree(
            path, tmp, ignore=lambda d, names: skip & set(names) if d == str(path) else []
        )
        save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp / WEIGHTS))
        save_file(tensors, str(tmp / checkpoint.STATE_TENSORS))
        (tmp / checkpoint.STATE_JSON).write_text(json.dumps(manifest) + "\n")
        checkpoint.commit(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
