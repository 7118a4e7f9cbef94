"""Inference loading: a checkpoint directory -> (model in eval mode, tokenizer, config).

Lives with the models and imports nothing from ``train/`` or ``eval/``: evaluation, search and
export rebuild a model from the checkpoint alone. A checkpoint directory holds ``config.json``
(the resolved run config), ``model.safetensors`` (the weights, never a pickle; an FSDP run's
checkpoint holds ``sharded/`` instead, read by ``sharded_weights.py``), ``manifest.json`` (every
file, and which of the two layouts the weights are in: ``manifest.py``) and, for models with a
text tower, ``tokenizer/``; the training state beside them is the trainer's business
(``train/checkpoint.py``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model as load_safetensors
from torch import nn

from vlcontrast import config as config_lib
from vlcontrast.config import Config
from vlcontrast.models import manifest, sharded_weights
from vlcontrast.models.build import build_model, has_text
from vlcontrast.models.image_tower import HUB_PREFIXES
from vlcontrast.models.text_tower import load_tokenizer
from vlcontrast.schema import ConfigError

WEIGHTS = manifest.WEIGHTS
TEXT_CONFIG = "text_config.json"  # the text encoder's transformers config, saved beside weights


def architecture_files(model: nn.Module) -> dict[str, str]:
    """What a checkpoint holds besides weights so that loading it needs nothing else: the text
    encoder's config (a hub name in ``text.model`` would otherwise be fetched to learn it)."""
    text = getattr(model, "text", None)
    if text is None:
        return {}
    return {TEXT_CONFIG: text.encoder.config.to_json_string()}


def self_contained(cfg: Config, path: Path, allow_download: bool) -> Config:
    """Point ``cfg`` at the checkpoint's own files: weights come from ``model.safetensors``, so
    nothing pretrained is fetched; the text tower is rebuilt from ``text_config.json``. A hub
    name that only a download could resolve (a tower, or the tokenizer of a checkpoint without
    ``tokenizer/``) is refused unless ``allow_download``."""
    recorded_tokenizer = cfg.text.tokenizer or cfg.text.model  # read_config's, if no tokenizer/
    cfg.image.pretrained = False
    cfg.text.pretrained = False
    # the file a run started from is not read again (it may be gone, or a stranger's checkpoint
    # may name a file of its own): its weights are in the checkpoint's
    cfg.image.checkpoint_path = ""
    if cfg.image.model.startswith(HUB_PREFIXES) and not allow_download:
        raise ConfigError(
            f"{path}: image.model is the hub model {cfg.image.model!r}; building it downloads its "
            f"config. Pass --allow-download (eval) or allow_download=True to let it"
        )
    if (path / TEXT_CONFIG).is_file() and has_text(cfg):
        try:
            values = json.loads((path / TEXT_CONFIG).read_text())
        except ValueError as err:
            raise ConfigError(f"this checkpoint is damaged: {path / TEXT_CONFIG} ({err})") from None
        cfg.text.config, cfg.text.model = values, ""
    elif has_text(cfg) and cfg.text.model and not Path(cfg.text.model).exists():
        if not allow_download:
            raise ConfigError(
                f"{path}: text.model is the hub model {cfg.text.model!r} and the checkpoint holds "
                f"no {TEXT_CONFIG} (written by earlier versions); building it downloads its "
                f"config. Pass --allow-download (eval) or allow_download=True to let it"
            )
    tokenizer = recorded_tokenizer
    if has_text(cfg) and tokenizer and not Path(tokenizer).exists() and not allow_download:
        raise ConfigError(
            f"{path}: holds no tokenizer/, and the tokenizer it recorded, {tokenizer!r}, is not "
            f"on this machine; loading it would download it. Pass --allow-download (eval) or "
            f"allow_download=True to let it"
        )
    return cfg


def is_checkpoint(path: str | Path) -> bool:
    """A directory with a config and weights: ``model.safetensors`` or the shards of an FSDP
    run (``models/sharded_weights.py``); which of them is read is its manifest's business."""
    path = Path(path)
    weights = (path / WEIGHTS).is_file() or sharded_weights.has_shards(path)
    return weights and (path / "config.json").is_file()


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


# Heads that checkpoints written before methods owned them kept in model.safetensors (an
# image-only model's projection and predictor, SLIP's head): not part of the model now, handed
# back to the trainer (``train/task_state.py``), which gives them to the task on resume
LEGACY_HEADS = ("image.proj.", "predictor.", "ssl_head.")


def load_weights(path: str | Path, model: nn.Module) -> dict[str, Any]:
    """Load ``model.safetensors`` strictly, except for the text encoder's pooler, which
    checkpoints written before it was dropped (it never gets a gradient) still hold, and the
    heads of older layouts (:data:`LEGACY_HEADS`), returned by name."""
    file = Path(path) / WEIGHTS
    if manifest.layout(path) == "sharded":
        state = sharded_weights.read_tensors(path, sharded_weights.MODEL)
        missing, unexpected = model.load_state_dict(state, strict=False)
        heads = {k: state[k] for k in unexpected if k.startswith(LEGACY_HEADS)}
    else:
        try:  # safetensors' loader: tensors saved once for several tied names come back
            missing, unexpected = load_safetensors(model, str(file), strict=False)
            with safe_open(str(file), "pt") as handle:
                heads = {k: handle.get_tensor(k) for k in unexpected if k.startswith(LEGACY_HEADS)}
        except (SafetensorError, OSError) as err:
            raise ConfigError(f"this checkpoint is damaged: {file} ({err})") from None
    unexpected = [
        k for k in unexpected if not k.startswith("text.encoder.pooler.") and k not in heads
    ]
    if missing or unexpected:
        raise RuntimeError(
            f"{path}: checkpoint does not match the model (missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}); was it written with another config?"
        )
    return heads


EMA_PREFIX = "ema/weights/"  # the trainer's EMA part in state.safetensors (train/ema.py)


def load_ema_weights(path: str | Path, model: nn.Module) -> None:
    """Replace ``model``'s weights with the checkpoint's EMA of them (``train.ema``), read from
    ``state.safetensors`` (safetensors only, like every other read)."""
    file = Path(path) / "state.safetensors"
    try:
        with safe_open(str(file), "pt") as handle:
            names = [k for k in handle.keys() if k.startswith(EMA_PREFIX)]
            state = {k[len(EMA_PREFIX) :]: handle.get_tensor(k) for k in names}
    except (SafetensorError, OSError) as err:
        raise ConfigError(f"--weights ema: cannot read {file} ({err})") from None
    if not state:
        raise ConfigError(
            f"--weights ema: {path} holds no EMA weights (train with train.ema=0.9998 to keep them)"
        )
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(
            f"--weights ema: the EMA does not match the model (missing {missing[:3]})"
        )


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint that ``path`` names: a checkpoint directory, a run folder or its
    ``checkpoints/`` (their newest ``step_*``), or either followed by ``/latest``."""
    path = Path(path)
    if is_checkpoint(path):
        return path
    base = path.parent if path.name == "latest" and not path.exists() else path
    if not base.exists():
        raise ConfigError(f"--checkpoint: {path} does not exist")
    for folder in (base / "checkpoints", base):
        steps = sorted(p for p in folder.glob("step_*") if p.is_dir() and is_checkpoint(p))
        if steps:
            return steps[-1]
    found = ", ".join(sorted(p.name for p in base.iterdir())[:8]) if base.is_dir() else "a file"
    raise ConfigError(
        f"--checkpoint: {path} is not a checkpoint (config.json and model.safetensors), a run "
        f"folder or its checkpoints/ (it holds: {found or 'nothing'})"
    )


def load_model(
    path: str | Path, allow_download: bool = False, weights: str = "model"
) -> tuple[nn.Module, Any, Config]:
    """Model (eval mode), tokenizer (None for image-only models) and config of a checkpoint
    (anything :func:`resolve_checkpoint` takes), built from the checkpoint's files alone (see
    :func:`self_contained`); ``weights="ema"``: with the EMA of its weights (``train.ema``)."""
    path = resolve_checkpoint(path)
    cfg = self_contained(read_config(path), path, allow_download)
    model = build_model(cfg)
    load_weights(path, model)
    if weights == "ema":
        load_ema_weights(path, model)
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


def save_model_dir(model: nn.Module, tokenizer: Any, cfg: Config, out: str | Path) -> Path:
    """Write ``out`` as :func:`load_model` reads it (config, weights, text config, tokenizer),
    through a temporary directory renamed into place: an imported or exported model is never
    half written."""
    import os
    import shutil

    from safetensors.torch import save_model

    out = Path(out)
    if out.exists():
        raise ConfigError(f"--out: {out} exists; choose a new directory")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        save_model(model, str(tmp / WEIGHTS))
        if tokenizer is not None:  # a run file started from this config finds the tokenizer
            cfg.text.tokenizer = str(out.resolve() / "tokenizer")
        config_lib.save(cfg, tmp / "config.json")
        for name, text in architecture_files(model).items():
            (tmp / name).write_text(text)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp / "tokenizer"))
        manifest.write(tmp, "single")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    tmp.rename(out)
    return out
