"""Zero-shot classification: class prompts -> text embeddings -> nearest class per image.

Prompt ensembling follows CLIP (Radford et al. 2021, section 3.1.4): each class embedding is the
mean of its unit-norm template embeddings, renormalised. Scoring is a pure function of tensors.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlcontrast.config import Config
from vlcontrast.data.batching import Collate, make_loader
from vlcontrast.data.shards import Decoder, ShardDataset, expand_urls
from vlcontrast.data.transforms import image_transform
from vlcontrast.eval.embed import embed_images, embed_texts


def class_embeddings(
    model: nn.Module,
    tokenize: Callable[[list[str]], dict[str, torch.Tensor]],
    classnames: list[str],
    templates: list[str],
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """(C, D) unit-norm class embeddings, averaged over ``templates``."""
    prompts = [template.format(name) for name in classnames for template in templates]
    txt_emb = embed_texts(model, tokenize, prompts, device=device)  # (C*T, D)
    txt_emb = txt_emb.view(len(classnames), len(templates), -1)  # (C, T, D)
    return F.normalize(txt_emb.mean(dim=1), dim=-1)


def topk_accuracy(
    img_emb: torch.Tensor, labels: torch.Tensor, cls_emb: torch.Tensor, ks: tuple[int, ...] = (1, 5)
) -> dict[str, float]:
    """Fraction of images whose label is among the ``k`` most similar classes."""
    logits = img_emb @ cls_emb.T  # (N, C)
    ranked = logits.topk(min(max(ks), cls_emb.shape[0]), dim=-1).indices  # (N, K)
    hits = ranked == labels.unsqueeze(1)  # (N, K)
    return {f"top{k}": hits[:, :k].any(dim=1).float().mean().item() for k in ks}


def load_classes(path: str | Path) -> dict[str, Any]:
    """``{"classnames": [...], "templates": [...]}`` from a JSON file (templates optional)."""
    values = json.loads(Path(path).read_text())
    if "classnames" not in values:
        raise ValueError(f"{path}: needs a 'classnames' list")
    return values


def classes_file(cfg: Config) -> Path:
    if cfg.eval.classes:
        return Path(cfg.eval.classes)
    first = expand_urls(cfg.eval.zeroshot_shards)[0]
    return Path(first).parent / "classes.json"


def eval_loader(
    cfg: Config, shards: str, image_tower: nn.Module, tokenizer, label_key: str = "cls"
):
    """In-order, single-pass loader over labelled shards with the training preprocessing."""
    transform = image_transform(cfg.image.image_size, image_tower.mean, image_tower.std)
    decoder = Decoder(
        transform,
        image_keys=tuple(cfg.data.image_keys.split(";")),
        caption_key=cfg.data.caption_key,
        label_key=label_key,
    )
    dataset = ShardDataset(expand_urls(shards), decoder, shuffle_shards=False)
    collate = Collate(tokenizer, cfg.text.context_length, dataset)
    return dataset, make_loader(dataset, collate, cfg.eval.batch_size, 0, drop_last=False)


def evaluate_zeroshot(
    model: nn.Module, tokenizer, cfg: Config, device: torch.device | str = "cpu"
) -> dict[str, Any]:
    """Zero-shot top-1/top-5 on ``cfg.eval.zeroshot_shards``; also returns the predictions."""
    classes = load_classes(classes_file(cfg))
    templates = cfg.eval.templates or classes.get("templates") or ["a photo of a {}."]
    dataset, loader = eval_loader(cfg, cfg.eval.zeroshot_shards, model.image, tokenizer)
    collate = loader.collate_fn
    cls_emb = class_embeddings(model, collate.tokenize, classes["classnames"], templates, device)
    embedded = embed_images(model, loader, device)
    img_emb, labels = embedded["img_emb"], embedded["labels"]
    metrics = topk_accuracy(img_emb, labels, cls_emb.cpu())
    metrics["chance"] = 1.0 / len(classes["classnames"])
    metrics["n"] = float(len(labels))
    return {
        "metrics": metrics,
        "predictions": (img_emb @ cls_emb.cpu().T).argmax(dim=-1),
        "labels": labels,
        "img_emb": img_emb,
        "texts": embedded["texts"],
        "keys": embedded["keys"],
        "classnames": classes["classnames"],
        "skipped": dict(dataset.errors),
    }
