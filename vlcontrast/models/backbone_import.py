"""``vlcontrast import backbone``: a backbone's released weights (``models/backbone_weights.py``
reads them) as an image-only checkpoint, normalised and cut as its authors evaluated it, that
``eval knn``, ``linear-probe``, ``dense-knn``, ``index`` and ``model.init_from`` take."""

from __future__ import annotations

from pathlib import Path

from vlcontrast import config as config_lib
from vlcontrast.models.build import build_model
from vlcontrast.models.image_tower import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from vlcontrast.schema import ConfigError

# ImageNet's statistics, which DINO, SwAV, MoCo and DenseCL normalise with (their data loaders)
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CLIP = (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
STATISTICS = {"imagenet": IMAGENET, "clip": CLIP}


def import_backbone(
    file: str | Path,
    model: str,
    model_kwargs: dict | None = None,
    image_size: int = 224,
    statistics: str = "imagenet",
    eval_crop: float = 0.875,
):
    """(model, None, config) of an image-only checkpoint holding ``file``'s backbone as timm's
    ``model``, normalising with ``statistics`` and keeping ``eval_crop`` of the centred square
    (0.875: the resize 256, centre 224 of the published ImageNet figures);
    ``vlcontrast import backbone`` saves it for ``eval knn``, ``linear-probe``, ``dense-knn``,
    ``index`` and ``model.init_from``."""
    if statistics not in STATISTICS:
        raise ConfigError(f"statistics: {statistics!r} is not one of {', '.join(STATISTICS)}")
    # the model does not depend on the objective (methods own their heads); a run that starts
    # from the import names its own
    cfg = config_lib.load(None, ["model.kind=image", "objective.name=simclr"])
    mean, std = STATISTICS[statistics]
    image = {"model": model, "model_kwargs": dict(model_kwargs or {}), "image_size": image_size}
    image |= {"eval_crop": eval_crop, "mean": list(mean), "std": list(std)}
    config_lib.apply(cfg, {"image": {**image, "checkpoint_path": str(file)}})  # keys checked
    built = build_model(cfg)
    cfg.image.checkpoint_path = ""  # the weights are the checkpoint's own from now on
    return built, None, cfg
