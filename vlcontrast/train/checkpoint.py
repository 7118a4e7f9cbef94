"""Atomic checkpoints: a checkpoint directory appears complete or not at all.

Layout of ``{output_dir}/checkpoints/step_{step:08d}/``: ``model.safetensors`` (weights),
``train_state.pt`` (optimizer, scheduler, step, data position, RNG states), ``config.json`` (the
resolved run config) and ``tokenizer/``, so evaluation rebuilds everything from the directory.

Everything is written into a hidden temporary directory, fsynced, then renamed into place; the
rename is the commit. A process killed mid-save leaves only a ``.tmp-*`` directory, which
``latest`` ignores and the next save removes, so the last good checkpoint is never replaced by a
partial one.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model, save_model
from torch import nn

from vlcontrast import config as config_lib

_NAME = re.compile(r"^step_(\d{8})$")


def _fsync_tree(path: Path) -> None:
    for file in path.rglob("*"):
        if file.is_file():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())


def rng_state() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(
    root: str | Path,
    step: int,
    model: nn.Module,
    train_state: dict[str, Any],
    cfg: config_lib.Config,
    tokenizer: Any = None,
    keep: int = 2,
) -> Path:
    """Write checkpoint ``step`` under ``root`` atomically; keep the newest ``keep``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp-step_{step:08d}-{os.getpid()}"
    tmp.mkdir()
    save_model(model, str(tmp / "model.safetensors"))
    torch.save(train_state, tmp / "train_state.pt")
    config_lib.save(cfg, tmp / "config.json")
    if tokenizer is not None:
        tokenizer.save_pretrained(str(tmp / "tokenizer"))
    _fsync_tree(tmp)
    if final.exists():  # re-saving a step (after a resume): move the old one aside first
        old = root / f".tmp-old-{final.name}-{os.getpid()}"
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old)
    else:
        tmp.rename(final)
    for stale in all_checkpoints(root)[:-keep]:
        shutil.rmtree(stale)
    return final


def all_checkpoints(root: str | Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _NAME.match(p.name)]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def latest(root: str | Path) -> Path | None:
    found = all_checkpoints(root)
    return found[-1] if found else None


def load_config(path: str | Path) -> config_lib.Config:
    """The run config stored in a checkpoint, pointing at the checkpoint's own tokenizer."""
    path = Path(path)
    cfg = config_lib.from_dict(json.loads((path / "config.json").read_text()))
    if (path / "tokenizer").is_dir():
        cfg.text.tokenizer = str(path / "tokenizer")
    return cfg


def load_weights(path: str | Path, model: nn.Module) -> None:
    """Load ``model.safetensors`` strictly, except for the text encoder's pooler, which
    checkpoints written before it was dropped (it never gets a gradient) still hold."""
    missing, unexpected = load_model(model, str(Path(path) / "model.safetensors"), strict=False)
    unexpected = [k for k in unexpected if not k.startswith("text.encoder.pooler.")]
    if missing or unexpected:
        raise RuntimeError(
            f"{path}: checkpoint does not match the model (missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}); was it written with another config?"
        )


def load_train_state(path: str | Path) -> dict[str, Any]:
    return torch.load(Path(path) / "train_state.pt", weights_only=False)
