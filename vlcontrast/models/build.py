"""Models from the config: ``model.kind`` picks the class (a plain dict registry)."""

from __future__ import annotations

from torch import nn

from vlcontrast.config import Config
from vlcontrast.models.dual import DualEncoder
from vlcontrast.models.image_only import ImageEncoder
from vlcontrast.models.text_only import TextEncoder
from vlcontrast.schema import ConfigError

MODELS: dict[str, type[nn.Module]] = {
    "dual": DualEncoder,
    "image": ImageEncoder,
    "text": TextEncoder,
}


def build_model(cfg: Config) -> nn.Module:
    if cfg.model.kind not in MODELS:
        raise ConfigError(
            f"model.kind: unknown value {cfg.model.kind!r}; choose one of {', '.join(MODELS)}"
        )
    return MODELS[cfg.model.kind](cfg)


def has_text(cfg: Config) -> bool:
    """Whether the model has a text tower (and so needs a tokenizer and captions)."""
    return cfg.model.kind in ("dual", "text")


def has_image(cfg: Config) -> bool:
    """Whether the model has an image tower."""
    return cfg.model.kind != "text"
