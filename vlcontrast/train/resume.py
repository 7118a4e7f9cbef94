"""The loop's side of checkpoints: which checkpoint a run resumes from, restoring every part
(changed ``optim.*`` settings applied from the saved step), and saving the parts.

Every rank takes its parts' state (the RNG part gathers all ranks); rank 0 writes the directory
(``train/checkpoint.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlcontrast.config import Config, ConfigError
from vlcontrast.distributed import print0
from vlcontrast.train import checkpoint
from vlcontrast.train.optim import apply_settings


def resolve_resume(resume: str, ckpt_root: Path) -> Path | None:
    if not resume:
        return None
    if resume == "latest":
        return checkpoint.latest(ckpt_root)  # None: nothing saved yet, start fresh
    path = Path(resume)
    if not (path / checkpoint.WEIGHTS).is_file():
        raise ConfigError(f"train.resume: {path} is not a checkpoint directory")
    return path


def resume(path: Path, model, parts: dict[str, Any], cfg: Config) -> int:
    """Restore every part; changed ``optim.*`` settings take effect (the schedule is rebuilt
    from the current config at the saved step) and are listed."""
    step = checkpoint.restore(path, model, parts)
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
    """Every rank takes its parts' state (the RNG part gathers all ranks); rank 0 writes."""
    from vlcontrast.train import fsdp

    accelerator.wait_for_everyone()
    states = {name: part.state_dict() for name, part in parts.items()}
    weights = fsdp.full_model_state(model) if fsdp.is_sharded(model) else None  # a collective
    if accelerator.is_main_process:
        checkpoint.save(
            root, step, model, states, cfg, tokenizer, cfg.train.keep_checkpoints, weights
        )
    accelerator.wait_for_everyone()
