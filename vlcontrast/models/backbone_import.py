"""``vlcontrast import backbone``: a backbone's released weights (``models/backbone_weights.py``
reads them) as an image-only checkpoint, normalised and cut as its authors evaluated it, that
``eval knn``, ``linear-probe``, ``dense-knn``, ``index`` and ``model.init_from`` take."""

from __future__ import annotations

import json
from pathlib import Path

from vlcontrast import config as config_lib
from vlcontrast.models.backbone_weights import describe, load_backbone
from vlcontrast.models.build import build_model
from vlcontrast.models.image_tower import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from vlcontrast.schema import ConfigError

# ImageNet's statistics, which DINO, SwAV, MoCo and DenseCL normalise with (their data loaders)
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CLIP = (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
STATISTICS = {"imagenet": IMAGENET, "clip": CLIP}


def import_backbone(
    source: str | Path,
    model: str = "",
    model_kwargs: dict | None = None,
    image_size: int | None = None,
    statistics: str | None = None,
    eval_crop: float | None = None,
):
    """(model, None, config) of an image-only checkpoint holding the backbone of ``source`` (a
    weights file, or a timm model folder: ``config.json`` + ``model.safetensors``, as
    ``huggingface-cli download timm/NAME`` and ``export --to timm`` write) as timm's ``model``,
    normalising with ``statistics`` and keeping ``eval_crop`` of the centred square. What is
    not given comes from the folder's config, else ImageNet's statistics, 224 px and 0.875
    (the resize 256, centre 224 of the published ImageNet figures). ``vlcontrast import
    backbone`` saves it for ``eval knn``, ``linear-probe``, ``dense-knn``, ``index`` and
    ``model.init_from``."""
    found = timm_folder(Path(source)) if Path(source).is_dir() else {"file": Path(source)}
    model = model or found.get("model", "")
    if not model:
        raise ConfigError(
            f"model: name the timm architecture {source} holds (--model resnet50, "
            "vit_small_patch16_224, ...)"
        )
    if statistics is not None and statistics not in STATISTICS:
        raise ConfigError(f"statistics: {statistics!r} is not one of {', '.join(STATISTICS)}")
    mean, std = STATISTICS[statistics] if statistics else found.get("stats") or IMAGENET
    # the model does not depend on the objective (methods own their heads); a run that starts
    # from the import names its own
    cfg = config_lib.load(None, ["model.kind=image", "objective.name=simclr"])
    image = {
        "model": model,
        "model_kwargs": found.get("model_kwargs", {}) if model_kwargs is None else model_kwargs,
        "image_size": image_size or found.get("image_size") or 224,
        "eval_crop": eval_crop or found.get("eval_crop") or 0.875,
        "mean": list(mean),
        "std": list(std),
    }
    config_lib.apply(cfg, {"image": image})  # each value checked, its key named
    built = build_model(cfg)
    report = load_backbone(built.image.trunk, found["file"], model, "import backbone")
    print(describe(report, found["file"], "import backbone"))
    return built, None, cfg


def timm_folder(folder: Path) -> dict:
    """What a timm model folder holds: its weights file, and from ``config.json`` (JSON, read
    as data) the architecture, its arguments, input size, statistics and crop share."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"source: {folder} is not a timm model folder ({err})") from None
    weights = [folder / n for n in ("model.safetensors", "pytorch_model.bin")]
    weights = [path for path in weights if path.is_file()]
    if not weights or not isinstance(config, dict):
        raise ConfigError(f"source: {folder} has no model.safetensors or pytorch_model.bin")
    data = config.get("pretrained_cfg", config)  # older configs keep it at the top level
    size = data.get("input_size")
    has_stats = data.get("mean") and data.get("std")
    found = {
        "file": weights[0],
        "model": str(config.get("architecture", "")),
        "model_kwargs": config.get("model_args") or {},
        "image_size": int(size[-1]) if isinstance(size, list | tuple) and size else None,
        "stats": (data["mean"], data["std"]) if has_stats else None,
        "eval_crop": data.get("crop_pct"),
    }
    return {key: value for key, value in found.items() if value is not None}
