"""The loop's side of checkpoints: which checkpoint a run resumes from, restoring every part
(changed ``optim.*`` settings applied from the saved step), and saving the parts.

Every rank takes its parts' state (the RNG part gathers all ranks); rank 0 writes the directory
(``train/checkpoint.py``), after every rank wrote its shards under FSDP
(``train/sharded_checkpoint.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vlcontrast.config import Config, ConfigError
from vlcontrast.distributed import print0
from vlcontrast.models.load import is_checkpoint
from vlcontrast.models.sharded_weights import SHARDS
from vlcontrast.train import checkpoint
from vlcontrast.train.optim import apply_settings, keep_saved_groups


def resolve_resume(resume: str, ckpt_root: Path) -> Path | None:
    if not resume:
        return None
    if resume == "latest":
        return checkpoint.latest(ckpt_root)  # None: nothing saved yet, start fresh
    path = Path(resume)
    if not is_checkpoint(path):
        raise ConfigError(f"train.resume: {path} is not a checkpoint directory")
    return path


def resume(path: Path, task, parts: dict[str, Any], cfg: Config) -> int:
    """Restore every part (the shared model ``task.model``, the task's heads and state, the
    optimizer over both, ...); changed ``optim.*`` settings take effect (the schedule is
    rebuilt from the current config at the saved step) and are listed."""
    sizes = checkpoint.optimizer_group_sizes(path)
    if sizes is not None and isinstance(parts["optimizer"], torch.optim.Optimizer):
        keep_saved_groups(parts["optimizer"], task, sizes)
    step = checkpoint.restore(path, task.model, parts)
    print0(f"resumed from {path} at step {step}")
    before = checkpoint.read_config(path).optim
    changed = [
        f"optim.{key} {getattr(before, key)} -> {value}"
        for key, value in vars(cfg.optim).items()
        if getattr(before, key) != value
    ]
    apply_settings(parts["optimizer"], parts["scheduler"], cfg.optim, step)
    if changed:
        print0("resuming with changed settings (applied from this step): " + ", ".join(changed))
    return step


def save_checkpoint(accelerator, root, model, parts: dict[str, Any], step, cfg, tokenizer) -> None:
    """Every rank takes its parts' state (the RNG part gathers all ranks); rank 0 writes. Under
    FSDP with ``train.sharded_checkpoints`` every rank first writes its shards of the weights
    and optimizer state into the staging directory that rank 0 then commits."""
    from vlcontrast.train import fsdp, sharded_checkpoint

    accelerator.wait_for_everyone()
    sharded = fsdp.is_sharded(model)
    staged, weights = None, None
    if sharded and cfg.train.sharded_checkpoints:
        if accelerator.is_main_process:
            checkpoint.begin_staging(root, step)
        accelerator.wait_for_everyone()
        staged = checkpoint.staging_dir(root, step)
        optimizer = parts["optimizer"].optimizer
        try:
            shards = sharded_checkpoint.save_shards(model, optimizer, staged / SHARDS)
        except sharded_checkpoint.ShardWriteError as err:
            raise checkpoint.CheckpointError(
                f"could not write checkpoint step {step} in {root}: {err}; the previous "
                f"checkpoint is intact. Free space if the disk is full, then resume with "
                f"train.resume=latest"
            ) from None
        parts = {name: part for name, part in parts.items() if name != "optimizer"}
    elif sharded:
        weights = fsdp.full_model_state(model)  # a collective
    states = {name: part.state_dict() for name, part in parts.items()}
    if staged is not None:
        states["optimizer"] = shards
    if accelerator.is_main_process:
        checkpoint.save(
            root, step, model, states, cfg, tokenizer, cfg.train.keep_checkpoints, weights, staged
        )
    accelerator.wait_for_everyone()
