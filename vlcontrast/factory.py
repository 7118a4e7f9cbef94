"""The one place that turns config strings into classes: plain dict registries.

Adding an objective (SigLIP, SimCLR, MoCo) is one entry in ``OBJECTIVES`` plus its model in
``MODELS``; an evaluator is one entry in ``EVALUATORS``. Nothing else in the trainer changes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from vlcontrast.config import Config, ConfigError
from vlcontrast.eval.probes import evaluate_knn, evaluate_linear_probe
from vlcontrast.eval.retrieval import evaluate_retrieval
from vlcontrast.eval.zeroshot import evaluate_zeroshot
from vlcontrast.models.clip import CLIP, SigLIP
from vlcontrast.models.text_tower import load_tokenizer
from vlcontrast.objectives.base import Objective
from vlcontrast.objectives.clip import CLIPObjective
from vlcontrast.objectives.siglip import SigLIPObjective
from vlcontrast.train import checkpoint

OBJECTIVES: dict[str, type[Objective]] = {"clip": CLIPObjective, "siglip": SigLIPObjective}
MODELS: dict[str, type[nn.Module]] = {"clip": CLIP, "siglip": SigLIP}
# kind -> fn(embedder, EvaluatorConfig) -> {"metrics": {...}, ...}
EVALUATORS: dict[str, Callable[..., dict[str, Any]]] = {
    "zeroshot": evaluate_zeroshot,
    "retrieval": evaluate_retrieval,
    "linear_probe": evaluate_linear_probe,
    "knn": evaluate_knn,
}


def _lookup(registry: dict, name: str, key: str):
    if name not in registry:
        raise ConfigError(f"{key}: unknown value {name!r}; choose one of {', '.join(registry)}")
    return registry[name]


def build_model(cfg: Config) -> nn.Module:
    return _lookup(MODELS, cfg.loss.name, "loss.name")(cfg)


def build_objective(cfg: Config) -> Objective:
    return _lookup(OBJECTIVES, cfg.loss.name, "loss.name")(cfg.loss)


def load_for_eval(ckpt: str | Path) -> tuple[nn.Module, Any, Config]:
    """Model (eval mode), tokenizer and config rebuilt from a checkpoint directory alone."""
    cfg = checkpoint.load_config(ckpt)
    model = build_model(cfg)
    checkpoint.load_weights(ckpt, model)
    return model.eval(), load_tokenizer(cfg.text), cfg
