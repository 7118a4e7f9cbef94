"""Zero-shot classification: class prompts -> text embeddings -> nearest class per image.

Prompt ensembling follows CLIP (Radford et al. 2021, section 3.1.4): each class embedding is the
mean of its unit-norm template embeddings, renormalised (``ensemble_prompts``). Templates come
from ``eval.templates`` (built-in sets ``openai_imagenet`` and ``generic``, files or literals);
class names from a classes file or the dataset itself (ImageFolder folders, HF ClassLabel).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from vlcontrast.data.collection import class_info, open_source
from vlcontrast.data.vocab import unknown_warning
from vlcontrast.distributed import print0
from vlcontrast.embed import Embedder
from vlcontrast.eval.labels import drop_out_of_range
from vlcontrast.eval.metrics import classification_metrics
from vlcontrast.eval.templates import resolve_templates


def ensemble_prompts(txt_emb: torch.Tensor) -> torch.Tensor:
    """(C, T, D) template embeddings -> (C, D) unit-norm class embeddings."""
    return F.normalize(F.normalize(txt_emb, dim=-1).mean(dim=1), dim=-1)


def zeroshot_classifier(
    embedder: Embedder, classnames: list[str], templates: list[str]
) -> torch.Tensor:
    """(C, D) class embeddings from every (class, template) prompt."""
    prompts = [template.format(name) for name in classnames for template in templates]
    txt_emb = embedder.texts(prompts)  # (C*T, D)
    return ensemble_prompts(txt_emb.view(len(classnames), len(templates), -1))  # (C, D)


_warned: set = set()


def warn_unknown_prompts(tokenizer, classnames: list[str], templates: list[str]) -> None:
    """Once per (classes, templates): warn when the prompts are mostly unknown tokens."""
    key = (tuple(classnames), tuple(templates))
    if tokenizer is None or key in _warned:
        return
    _warned.add(key)
    prompts = [template.format(name) for name in classnames for template in templates]
    message = unknown_warning(tokenizer, prompts, "zero-shot prompt")
    if message:
        print0(message)


def evaluate_zeroshot(embedder: Embedder, spec) -> dict[str, Any]:
    """Zero-shot metrics on ``spec.data``; also returns the embeddings and predictions."""
    source = open_source(spec, spec.data, spec.split)
    classnames, file_templates = class_info(spec, source)
    templates = resolve_templates(spec.templates, fallback=file_templates)
    warn_unknown_prompts(embedder.tokenizer, classnames, templates)
    cls_emb = zeroshot_classifier(embedder, classnames, templates)
    embedded = embedder.images(source, need_label=True, max_samples=spec.max_samples)
    embedded = drop_out_of_range(embedded, len(classnames))
    labels = embedded["labels"]
    if labels is None:
        raise ValueError(
            f"{spec.data}: no image with a label in 0..{len(classnames) - 1} could be read "
            f"({embedded['skipped']}); check the classes"
        )
    logits = embedded["img_emb"] @ cls_emb.T  # (N, C)
    result = classification_metrics(logits, labels, classnames)
    result.update(
        templates=len(templates),
        skipped=embedded["skipped"],
        predictions=logits.argmax(dim=-1),
        labels=labels,
        img_emb=embedded["img_emb"],
        keys=embedded["keys"],
    )
    return result
