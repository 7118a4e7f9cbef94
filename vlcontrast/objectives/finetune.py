"""Fine-tuning a CLIP on labelled images through its own zero-shot head (``objective.name=
finetune``), the end-to-end fine-tuning that WiSE-FT interpolates (Wortsman et al. 2022).

At setup the text tower embeds every (class, template) prompt and the class embeddings, ensembled
as zero-shot evaluation does (``eval/zeroshot.py``), become the head: logits are
``exp(logit_scale) * img_emb @ head.T`` (B, C) and the loss is cross-entropy with the shards'
labels (``data.label_key``). Starting from the zero-shot head rather than a random one keeps the
features from being distorted while a random head catches up (Kumar et al. 2022, LP-FT;
WiSE-FT's "zero-shot initialisation"). The head and the text tower stay fixed, so the
fine-tuned checkpoint is still a CLIP whose zero-shot classifier *is* the trained classifier:
``vlcontrast eval zeroshot`` scores it, search uses it, and ``vlcontrast weights interpolate``
between it and the model it started from is WiSE-FT exactly (only the image tower and the
logit scale differ). Labels outside ``[0, C)`` are left out of the loss
(``losses/classify.py``, exact across ranks) and counted in the ``labelled`` metric.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch

from vlcontrast.losses.classify import classification_loss, labelled
from vlcontrast.objective_settings import FinetuneConfig
from vlcontrast.objectives.base import Objective, detached, full
from vlcontrast.schema import ConfigError


class FinetuneObjective(Objective):
    modalities: ClassVar[tuple[str, ...]] = ("image",)
    needs_labels: ClassVar[bool] = True
    uses_text_tower: ClassVar[bool] = True  # the head comes from it; batches hold no text

    def __init__(self, cfg: FinetuneConfig | None = None):
        super().__init__()
        self.cfg = cfg if cfg is not None else FinetuneConfig()

    def setup(self, model, cfg: Any, global_batch: int) -> None:
        super().setup(model, cfg, global_batch)
        for param in model.text.parameters():  # the head's source: fixed, out of the optimizer
            param.requires_grad_(False)
        classnames, templates = class_prompts(self.cfg, cfg.data.train_shards)
        self.register_buffer("head", zeroshot_head(model, cfg, classnames, templates))  # (C, D)

    def outputs(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        out = self.model(images=batch["images"])
        return {"img_emb": out["img_emb"], "logit_scale": out["logit_scale"]}

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, Any]:
        logits = outputs["logit_scale"].float() * full(outputs["img_emb"]) @ self.head.T  # (B, C)
        labels = batch["labels"].to(logits.device)
        valid = labelled(labels, logits.shape[1])
        correct = ((logits.argmax(dim=1) == labels) & valid).sum()
        metrics = {
            "train_top1": detached(correct / valid.sum().clamp(min=1)),
            "labelled": detached(valid.float().mean()),
            "logit_scale": detached(outputs["logit_scale"]),
        }
        return {"loss": classification_loss(logits, labels), "metrics": metrics}

    def after_step(self, step: int) -> None:
        self.model.clamp_logit_scale()


def class_prompts(settings: FinetuneConfig, train_shards: str) -> tuple[list[str], list[str]]:
    """Class names (``objective.finetune.classes``, else the classes.json beside the training
    shards) and the head's templates."""
    from vlcontrast.data.collection import read_classes
    from vlcontrast.data.sources import parse_sources
    from vlcontrast.eval.templates import resolve_templates

    path = settings.classes
    if not path:
        urls = [url for source in parse_sources(train_shards) for url in source.urls]
        beside = Path(urls[0]).parent / "classes.json" if urls else None
        if beside is None or not beside.is_file():
            raise ConfigError(
                "objective.finetune.classes: the training shards have no classes.json beside "
                "them; give a classes file (JSON or one class name per line, in label order)"
            )
        path = str(beside)
    try:
        classnames, file_templates = read_classes(path)
        templates = resolve_templates(settings.templates, fallback=file_templates)
    except (OSError, ValueError) as err:
        raise ConfigError(f"objective.finetune.classes: {path}: {err}") from None
    if not classnames:
        raise ConfigError(f"objective.finetune.classes: {path} names no class")
    return classnames, templates


@torch.no_grad()
def zeroshot_head(model, cfg: Any, classnames: list[str], templates: list[str]) -> torch.Tensor:
    """(C, D) unit-norm class embeddings, as zero-shot evaluation makes them. The text tower
    runs on this rank's GPU when there is one (ImageNet's 1,000 x 80 prompts), each rank
    embedding its share of the prompts."""
    from vlcontrast.embed import Embedder
    from vlcontrast.eval.zeroshot import zeroshot_classifier
    from vlcontrast.models.text_tower import load_tokenizer

    device = torch.device("cpu")
    if torch.cuda.is_available():  # accelerate has set this rank's device
        device = torch.device("cuda", torch.cuda.current_device())
    text = model.text
    before = next(text.parameters()).device
    text.to(device)  # embedding sets eval mode; the loop sets train mode before every step
    try:
        embedder = Embedder.from_model(model, load_tokenizer(cfg.text), cfg, device)
        head = zeroshot_classifier(embedder, classnames, templates)
    finally:
        text.to(before)
    return head.float().cpu()
