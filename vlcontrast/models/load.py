"""Inference loading: a checkpoint directory -> (model in eval mode, tokenizer, config).

Lives with the models and imports nothing from ``train/`` or ``eval/``: evaluation, search and
export rebuild a model from the checkpoint alone. A checkpoint directory holds ``config.json``
(the resolved run config), ``model.safetensors`` (the weights, never a pickle) and, for models
with a text tower, ``tokenizer/``; the training state beside them is the trainer's business
(``train/checkpoint.py``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_model as load_safetensors
from torch import nn

from vlcontrast import config as config_lib
from vlcontrast.config import Config
from vlcontrast.models.build import build_model, has_text
from vlcontrast.models.text_tower import load_tokenizer
from vlcontrast.schema import ConfigError

WEIGHTS = "model.safetensors"


def is_checkpoint(path: str | Path) -> bool:
    return (Path(path) / WEIGHTS).is_file() and (Path(path) / "config.json").is_file()


def read_config(path: str | Path) -> Config:
    """The run config stored in a checkpoint, pointing at the checkpoint's own tokenizer."""
    path = Path(path)
    try:
        values = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"this checkpoint is damaged: {path / 'config.json'} ({err})") from None
    try:
        cfg = config_lib.from_dict(values)
    except ConfigError as err:
        raise ConfigError(f"this checkpoint is damaged: {path / 'config.json'} ({err})") from None
    if (path / "tokenizer").is_dir():
        cfg.text.tokenizer = str(path / "tokenizer")
    elif has_text(cfg):
        recorded = cfg.text.tokenizer or cfg.text.model
        print(
            f"warning: {path} has no tokenizer/; using the tokenizer recorded at training time "
            f"({recorded!r}), which may have changed since",
            file=sys.stderr,
        )
    return cfg


def load_weights(path: str | Path, model: nn.Module) -> None:
    """Load ``model.safetensors`` strictly, except for the text encoder's pooler, which
    checkpoints written before it was dropped (it never gets a gradient) still hold."""
    file = Path(path) / WEIGHTS
    try:
        missing, unexpected = load_safetensors(model, str(file), strict=False)
    except (SafetensorError, OSError) as err:
        raise ConfigError(f"this checkpoint is damaged: {file} ({err})") from None
    unexpected = [k for k in unexpected if not k.startswith("text.encoder.pooler.")]
    if missing or unexpected:
        raise RuntimeError(
            f"{path}: checkpoint does not match the model (missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}); was it written with another config?"
        )


def load_model(path: str | Path) -> tuple[nn.Module, Any, Config]:
    """Model (eval mode), tokenizer (None for image-only models) and config of a checkpoint."""
    path = Path(path)
    if not is_checkpoint(path):
        raise ConfigError(f"--checkpoint: {path} is not a checkpoint directory (step_*)")
    cfg = read_config(path)
    model = build_model(cfg)
    load_weights(path, model)
    tokenizer = None
    if has_text(cfg):
        try:
            tokenizer = load_tokenizer(cfg.text)
        except ConfigError as err:
            if (path / "tokenizer").is_dir():
                raise ConfigError(
                    f"this checkpoint is damaged: {path / 'tokenizer'} ({err})"
                ) from None
            raise
    return model.eval(), tokenizer, cfg
