"""Typed run configuration: one dataclass per concern, defaults in one place.

Every run is described by a :class:`Config`. A run file (YAML) holds only what differs from these
defaults; dotted command-line overrides (``optim.lr=3e-4``) are applied on top. Both are checked
against the schema: an unknown key or a value of the wrong type raises :class:`ConfigError` naming
the key and what was expected. The resolved config is saved beside every run and inside every
checkpoint (``to_dict``/``from_dict``), so evaluation rebuilds the model from a checkpoint alone.

Strings are coerced to the field's type, because PyYAML reads ``3e-4`` as a string (YAML 1.1
needs ``3.0e-4``) and command-line values are always strings.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config key is unknown, mistyped or out of range. The message names the key."""


def _choices(*values: str) -> dict:
    return {"choices": values}


@dataclass
class DataConfig:
    """The training data (see vlcontrast.data)."""

    # Brace-expandable shard pattern(s), several sources joined by ``::``; local paths, pipe:
    # commands and fsspec URLs (http, s3, gs)
    train_shards: str = ""
    weights: list = field(default_factory=list)  # resampled mode: each source's share of samples
    # epoch: every sample once per epoch; resampled: shards drawn with replacement, endless
    mode: str = field(default="epoch", metadata=_choices("epoch", "resampled"))
    num_samples: int = 0  # dataset size; 0: sizes.json, _stats.json, or count once (cached)
    batch_size: int = 256
    num_workers: int = 2
    # Logical streams per rank, fixed for a run (saved in checkpoints); the sample order depends on
    # it but not on num_workers, so a run resumes exactly with any worker count. 0: num_workers.
    streams: int = 0
    shuffle_buffer: int = 1000  # samples per shuffle window
    image_keys: str = "jpg;jpeg;png;webp"  # first present extension wins
    caption_key: str = "txt"  # or json.FIELD; a JSON list gives several captions, one is picked
    crop: str = field(default="center", metadata=_choices("center", "random_resized"))
    crop_scale: list = field(default_factory=lambda: [0.9, 1.0])  # random_resized area range
    draft: bool = True  # reduced-size JPEG decoding when the crop is at least 2x the output
    max_bad_fraction: float = 0.2  # stop when more than this fraction of samples fail ...
    bad_min_samples: int = 1000  # ... once at least this many samples were read


@dataclass
class ImageTowerConfig:
    model: str = "vit_base_patch32_224"  # any timm model name
    pretrained: bool = False
    image_size: int = 224
    model_kwargs: dict = field(default_factory=dict)  # passed to timm.create_model
    # Normalisation; empty means "take the timm model's pretrained_cfg".
    mean: list = field(default_factory=list)
    std: list = field(default_factory=list)


@dataclass
class TextTowerConfig:
    model: str = ""  # hub name or local directory of a transformers encoder
    config: dict = field(default_factory=dict)  # inline config (with model_type) for random init
    pretrained: bool = True  # load weights from `model`; ignored when `config` is given
    tokenizer: str = ""  # hub name, local dir or tokenizer.json; defaults to `model`
    pooling: str = field(default="cls", metadata=_choices("cls", "mean", "eos"))
    context_length: int = 77


@dataclass
class ModelConfig:
    embed_dim: int = 512
    # ln of the initial logit scale; None: the model's default, ln(1/0.07) for CLIP (CLIP paper),
    # ln(10) for SigLIP (SigLIP paper)
    init_logit_scale: float | None = None
    init_logit_bias: float = -10.0  # SigLIP only (SigLIP paper)
    max_logit_scale: float = 4.605170185988092  # ln(100), CLIP paper


@dataclass
class LossConfig:
    name: str = "clip"  # key of vlcontrast.factory.OBJECTIVES: clip or siglip
    # CLIP across ranks: "local" scores this rank's rows against all gathered columns (2·B·N
    # logits per rank), "global" has every rank compute the whole N x N loss. Same gradients.
    gather: str = field(default="local", metadata=_choices("local", "global"))
    # Blockwise CLIP loss (memory linear in the batch): on, off or auto (global batch >= tiled_from)
    tiled: str = field(default="auto", metadata=_choices("auto", "on", "off"))
    tiled_from: int = 8192
    tile_size: int = 1024


@dataclass
class OptimConfig:
    lr: float = 5e-4
    weight_decay: float = 0.2
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    warmup_steps: int = 500
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0  # max global grad norm; 0 disables


@dataclass
class TrainConfig:
    steps: int = 10000
    seed: int = 0
    precision: str = field(default="no", metadata=_choices("no", "bf16", "fp16"))
    output_dir: str = "runs/default"
    log_every: int = 10
    save_every: int = 1000
    keep_checkpoints: int = 2
    # Gradient caching: split each batch into this many micro-batches for the forward/backward
    # passes (activation memory of one micro-batch); the loss still sees the whole batch.
    grad_cache_steps: int = 1
    resume: str = ""  # "" (fresh), "latest" (newest in output_dir) or a checkpoint directory
    progress: bool = True
    tensorboard: bool = True


@dataclass
class EvaluatorConfig:
    """One entry of ``eval.evaluators``: what to evaluate, on which data (see vlcontrast.eval)."""

    kind: str = field(
        default="zeroshot", metadata=_choices("zeroshot", "retrieval", "linear_probe", "knn")
    )
    name: str = ""  # prefix of the logged metrics; default: kind
    data: str = ""  # the evaluation set: shard pattern, ImageFolder directory or HF dataset
    train_data: str = ""  # linear_probe and knn: the labelled set the classifier is fitted on
    format: str = field(default="auto", metadata=_choices("auto", "wds", "imagefolder", "hf"))
    split: str = "test"  # HF datasets: split of `data`
    train_split: str = "train"  # HF datasets: split of `train_data`
    image_field: str = ""  # "": jpg;jpeg;png;webp (shards), image (HF)
    label_field: str = ""  # "": cls (shards), label (HF)
    caption_field: str = ""  # "": txt (shards), caption (HF); shards: json.KEY reads a JSON field
    classes: str = ""  # class names: JSON ({"classnames": [...]} or a list) or one per line
    # Prompt templates: built-in set names (openai_imagenet, generic), files, or literal templates
    # with {}. Empty: the classes file's templates, else the generic set.
    templates: list = field(default_factory=list)
    max_samples: int = 0  # evaluate only the first N samples; 0 = all
    k: int = 200  # knn: neighbours (Wu et al. 2018)
    temperature: float = 0.1  # knn: similarity temperature
    val_fraction: float = 0.2  # linear_probe: held out from train_data to pick the L2 penalty
    weight_decays: list = field(default_factory=lambda: [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1])


@dataclass
class EvalConfig:
    # Evaluators run every `every` steps and at the end of training, e.g.
    #   evaluators: [{kind: zeroshot, data: "heldout/{00000..00001}.tar"}]
    evaluators: list = field(default_factory=list, metadata={"item": EvaluatorConfig})
    every: int = 0  # steps between evaluations; 0 = only at the end
    batch_size: int = 256
    num_workers: int = 0  # dataloader workers per rank while embedding


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    image: ImageTowerConfig = field(default_factory=ImageTowerConfig)
    text: TextTowerConfig = field(default_factory=TextTowerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


_POSITIVE = {
    "data.batch_size",
    "data.shuffle_buffer",
    "image.image_size",
    "text.context_length",
    "model.embed_dim",
    "train.steps",
    "train.log_every",
    "train.save_every",
    "train.keep_checkpoints",
    "eval.batch_size",
    "loss.tile_size",
    "loss.tiled_from",
    "train.grad_cache_steps",
    "k",
}
_NON_NEGATIVE = {
    "data.num_workers",
    "data.streams",
    "data.num_samples",
    "data.bad_min_samples",
    "data.max_bad_fraction",
    "optim.warmup_steps",
    "optim.grad_clip",
    "eval.every",
    "eval.num_workers",
    "max_samples",
}


def _optional_of(typ: Any) -> Any:
    """``X`` for ``X | None``, else None."""
    if typing.get_origin(typ) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(typ)) == 2:
            return args[0]
    return None


def _coerce(key: str, value: Any, typ: Any) -> Any:
    """Convert ``value`` to ``typ`` or raise a ConfigError that names ``key``."""
    optional = _optional_of(typ)
    if optional is not None:
        if value is None or (isinstance(value, str) and value.lower() in {"none", "null"}):
            return None
        return _coerce(key, value, optional)
    expected = getattr(typ, "__name__", str(typ))
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "false", "1", "0", "yes", "no"}:
            return value.lower() in {"true", "1", "yes"}
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif typ is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    elif typ in (list, dict):
        if isinstance(value, str):
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError:
                pass
        if isinstance(value, typ):
            return value
        if typ is list and isinstance(value, tuple):
            return list(value)
    raise ConfigError(f"{key}: expected {expected}, got {value!r} ({type(value).__name__})")


def _fields(cls: type) -> dict[str, tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(cls)
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(cls)}


def _check(key: str, f: dataclasses.Field, value: Any) -> None:
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"{key}: expected one of {', '.join(choices)}, got {value!r}")
    names = {key, f.name}  # list items (eval.evaluators[0].k) are checked by field name
    if names & _POSITIVE and value <= 0:
        raise ConfigError(f"{key}: expected a positive number, got {value!r}")
    if names & _NON_NEGATIVE and value < 0:
        raise ConfigError(f"{key}: expected a number >= 0, got {value!r}")


def _set(obj: Any, path: list[str], value: Any, prefix: str = "") -> None:
    name, rest = path[0], path[1:]
    key = f"{prefix}{name}"
    fields = _fields(type(obj))
    if name not in fields:
        valid = ", ".join(f"{prefix}{n}" for n in fields)
        raise ConfigError(f"unknown config key '{key}'; valid keys here: {valid}")
    f, typ = fields[name]
    if dataclasses.is_dataclass(typ):
        if rest:
            _set(getattr(obj, name), rest, value, prefix=f"{key}.")
            return
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {typ.__name__} keys, got {value!r}")
        for sub, sub_value in value.items():
            _set(getattr(obj, name), [str(sub)], sub_value, prefix=f"{key}.")
        return
    if rest:
        if typ is dict:  # model_kwargs.depth=2 sets one entry of a free-form dict
            entry = getattr(obj, name)
            for part in rest[:-1]:
                entry = entry.setdefault(part, {})
            entry[rest[-1]] = yaml.safe_load(value) if isinstance(value, str) else value
            return
        raise ConfigError(f"unknown config key '{key}.{'.'.join(rest)}': {key} has no sub-keys")
    value = _coerce(key, value, typ)
    if "item" in f.metadata:
        value = [_item(f"{key}[{i}]", f.metadata["item"], v) for i, v in enumerate(value)]
    _check(key, f, value)
    setattr(obj, name, value)


def _item(key: str, cls: type, value: Any) -> Any:
    """A list entry of dataclass ``cls`` from a mapping, checked key by key."""
    if isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a mapping of {cls.__name__} keys, got {value!r}")
    item = cls()
    for sub, sub_value in value.items():
        _set(item, [str(sub)], sub_value, prefix=f"{key}.")
    return item


def apply(cfg: Config, values: dict[str, Any]) -> Config:
    """Apply a nested mapping (a parsed run file) onto ``cfg`` in place and return it."""
    if not isinstance(values, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(values).__name__}")
    for key, value in values.items():
        _set(cfg, [str(key)], value)
    return cfg


def parse_override(text: str) -> tuple[list[str], str]:
    """Split ``optim.lr=3e-4`` into (["optim", "lr"], "3e-4")."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value, e.g. optim.lr=3e-4")
    key, value = text.split("=", 1)
    if not key or "." not in key:
        raise ConfigError(f"override '{text}' must name a section and a key, e.g. optim.lr=3e-4")
    return key.split("."), value


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    for text in overrides:
        path, value = parse_override(text)
        _set(cfg, path, value)
    return cfg


def load(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the run file at ``path`` (YAML or JSON), then dotted ``overrides``."""
    cfg = Config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path} is not valid YAML: {err}") from None
        apply(cfg, values)
    return apply_overrides(cfg, overrides or [])


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(values: dict[str, Any]) -> Config:
    return apply(Config(), _migrate(values))


def _migrate(values: dict[str, Any]) -> dict[str, Any]:
    """Configs saved before ``eval.evaluators`` (checkpoints of earlier versions) held one
    zero-shot set as ``eval.zeroshot_shards`` + ``classes`` + ``templates``."""
    section = dict(values.get("eval") or {})
    shards = section.pop("zeroshot_shards", None)
    old = {"classes": section.pop("classes", ""), "templates": section.pop("templates", [])}
    if shards is None:
        return values
    if shards:
        entry = {"kind": "zeroshot", "data": shards, **{k: v for k, v in old.items() if v}}
        section["evaluators"] = [entry]
    return {**values, "eval": section}


def save(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(json.dumps(to_dict(cfg), indent=2) + "\n")


def diff(cfg: Config) -> dict[str, Any]:
    """The entries of ``cfg`` that differ from the defaults, as a nested mapping."""
    out: dict[str, Any] = {}
    default = to_dict(Config())
    for section, values in to_dict(cfg).items():
        changed = {k: v for k, v in values.items() if default[section][k] != v}
        if changed:
            out[section] = changed
    return out


def keys() -> list[str]:
    """Every dotted key of the schema with its type and default, for --help."""
    out = []
    for section, (_, typ) in _fields(Config).items():
        out.extend(_describe(f"{section}.", typ))
    return out


def _describe(prefix: str, cls: type) -> list[str]:
    out = []
    for name, (f, typ) in _fields(cls).items():
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        kind = typ.__name__ if isinstance(typ, type) else str(typ)
        out.append(f"{prefix}{name} ({kind}, default {default!r})")
        if "item" in f.metadata:
            out.extend(_describe(f"{prefix}{name}[i].", f.metadata["item"]))
    return out
