"""The evaluator registry and the runner of the evaluators a config declares
(``eval.evaluators``), in training and from the CLI.

Evaluators take an :class:`~vlcontrast.embed.Embedder` (a model plus how to embed with it) and
their config entry, never the trainer (big_vision's evaluators take a predict function).

Every rank calls :func:`run_evaluators` together: each embeds its share of every set and the
gathered results are the same on all ranks, so the metrics are identical to one process's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from vlcontrast.config import Config, ConfigError
from vlcontrast.data.collection import class_info, open_source
from vlcontrast.embed import Embedder
from vlcontrast.eval.dense_knn import evaluate_dense_knn
from vlcontrast.eval.dense_linear import evaluate_dense_linear
from vlcontrast.eval.probes import (
    evaluate_class_retrieval,
    evaluate_knn,
    evaluate_linear_probe,
)
from vlcontrast.eval.retrieval import evaluate_retrieval
from vlcontrast.eval.sts import evaluate_sts
from vlcontrast.eval.templates import resolve_templates
from vlcontrast.eval.zeroshot import evaluate_zeroshot, warn_unknown_prompts
from vlcontrast.eval_config import DENSE, FITTED
from vlcontrast.models.build import has_image, has_text

# kind -> fn(embedder, EvaluatorConfig) -> {"metrics": {...}, ...}
EVALUATORS: dict[str, Callable[..., dict[str, Any]]] = {
    "zeroshot": evaluate_zeroshot,
    "retrieval": evaluate_retrieval,
    "linear_probe": evaluate_linear_probe,
    "knn": evaluate_knn,
    "class_retrieval": evaluate_class_retrieval,
    "sts": evaluate_sts,
    "dense_knn": evaluate_dense_knn,
    "dense_linear": evaluate_dense_linear,
}


# the towers each kind embeds with; the others: the image tower alone
TOWERS = {"zeroshot": ("image", "text"), "retrieval": ("image", "text"), "sts": ("text",)}


def missing_tower(cfg: Config, kind: str) -> tuple[str, list[str]] | None:
    """None if ``kind`` can run on the model ``model.kind`` builds, else the tower it lacks and
    the kinds that can run (zero-shot needs a text tower; kNN an image tower)."""
    has = {"image": has_image(cfg), "text": has_text(cfg)}
    missing = [tower for tower in TOWERS.get(kind, ("image",)) if not has[tower]]
    if not missing:
        return None
    return missing[0], [k for k in EVALUATORS if all(has[t] for t in TOWERS.get(k, ("image",)))]


def check_towers(cfg: Config, key: str, name: str, kind: str) -> None:
    """A ConfigError naming ``key`` if ``kind`` cannot run on the model
    (:func:`missing_tower`)."""
    if found := missing_tower(cfg, kind):
        raise ConfigError(
            f"{key}.kind: {kind} ({name}) needs a {found[0]} tower, and this model "
            f"(model.kind={cfg.model.kind}) has none; it can run: {', '.join(found[1])}"
        )


def evaluator_names(cfg: Config) -> list[str]:
    names = [spec.name or spec.kind for spec in cfg.eval.evaluators]
    for i, name in enumerate(names):
        if names.index(name) != i:
            raise ConfigError(
                f"eval.evaluators[{i}].name: {name!r} is used twice; give each evaluator a name"
            )
    return names


def check_evaluators(cfg: Config, tokenizer=None) -> None:
    """Validate every evaluator before training starts, so a mistake costs seconds, not a
    training run: its data is set and reachable, its classes and templates resolve (and a
    warning when the prompts are mostly unknown to ``tokenizer``)."""
    for i, (name, spec) in enumerate(zip(evaluator_names(cfg), cfg.eval.evaluators, strict=True)):
        key = f"eval.evaluators[{i}]"
        check_towers(cfg, key, name, spec.kind)
        if not spec.data:
            raise ConfigError(f"{key}.data: set the evaluation set of {name!r}")
        if spec.kind in (*FITTED, *DENSE) and not spec.train_data:
            raise ConfigError(f"{key}.train_data: {spec.kind} needs a labelled training set")
        if spec.kind in DENSE:
            check_shards(spec, key, name)
            continue
        if spec.kind == "sts":
            from pathlib import Path

            if not Path(spec.data).is_file():
                raise ConfigError(f"{key}.data ({name}): {spec.data}: no such pairs table")
            continue
        sources = {}
        splits = {"data": spec.split, "train_data": spec.train_split}
        for field in ("data", "train_data") if spec.train_data else ("data",):
            try:
                sources[field] = open_source(spec, getattr(spec, field), splits[field])
            except (ValueError, OSError) as err:
                raise ConfigError(f"{key}.{field} ({name}): {err}") from None
        if spec.kind == "zeroshot":
            try:
                classnames, file_templates = class_info(spec, sources["data"])
                templates = resolve_templates(spec.templates, fallback=file_templates)
            except (ValueError, OSError) as err:
                raise ConfigError(f"{key} ({name}): {err}") from None
            warn_unknown_prompts(tokenizer, classnames, templates)


def check_shards(spec, key: str, name: str) -> None:
    """The shard patterns of a dense evaluator name files that exist."""
    from vlcontrast.data.sources import expand_urls, missing_shards

    for field in ("data", "train_data"):
        urls = expand_urls(getattr(spec, field))
        missing = missing_shards(urls)
        if not urls or missing:
            first = missing[0] if missing else getattr(spec, field)
            raise ConfigError(f"{key}.{field} ({name}): no shard {first}")


def run_evaluators(
    model: nn.Module, tokenizer, cfg: Config, device: torch.device | str = "cpu", progress=False
) -> dict[str, dict[str, Any]]:
    """``{name: result}`` for every evaluator; a result holds ``metrics`` (scalars) and, per
    kind, per-class accuracies, the confusion matrix, skipped-sample counts, ..."""
    embedder = Embedder.from_model(model, tokenizer, cfg, device, progress)
    results = {}
    for i, (name, spec) in enumerate(zip(evaluator_names(cfg), cfg.eval.evaluators, strict=True)):
        check_towers(cfg, f"eval.evaluators[{i}]", name, spec.kind)
        if not spec.data:
            raise ConfigError(f"eval.evaluators[{i}].data: set the evaluation set of {name!r}")
        try:
            results[name] = EVALUATORS[spec.kind](embedder, spec)
        except (ValueError, FileNotFoundError) as err:
            raise ConfigError(f"eval.evaluators[{i}] ({name}): {err}") from None
    return results


def scalar_metrics(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """``{"name/metric": value}`` for logging next to the training metrics."""
    return {
        f"{name}/{key}": float(value)
        for name, result in results.items()
        for key, value in result["metrics"].items()
    }
