"""Evaluation metrics: pure functions on embeddings, scores and labels.

Nothing here knows about models or data: classification metrics take a score matrix and labels,
retrieval metrics take two embedding sets and which image each caption belongs to. Retrieval is
computed in blocks of queries, so memory is O(block x N) on top of the O(N x D) embeddings, never
the N x N similarity matrix (50k x 250k COCO-style captions would need 50 GB in fp32).

Ranks count the candidates scored *strictly* higher than the correct one (ties go to the correct
item), the convention of ``(scores > correct).sum()``; rank 0 is a hit at recall@1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def topk_accuracy(
    logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)
) -> dict[str, float]:
    """Fraction of rows whose label is among the ``k`` highest scores. logits: (N, C)."""
    ranked = logits.topk(min(max(ks), logits.shape[1]), dim=-1).indices  # (N, K)
    hits = ranked == labels.unsqueeze(1)  # (N, K)
    return {f"top{k}": hits[:, :k].any(dim=1).float().mean().item() for k in ks}


def confusion_matrix(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, C) counts: row = true class, column = predicted class."""
    flat = labels.long() * num_classes + preds.long()  # (N,)
    return torch.bincount(flat, minlength=num_classes**2).view(num_classes, num_classes)


def classification_metrics(
    logits: torch.Tensor, labels: torch.Tensor, classnames: Sequence[str]
) -> dict:
    """Top-1/top-5, mean per-class recall, per-class accuracy and the confusion matrix.

    Mean per-class recall averages over the classes present in ``labels`` (the metric of
    imbalanced sets such as FGVC-Aircraft or Pets in the CLIP paper's suite).
    """
    num_classes = len(classnames)
    confusion = confusion_matrix(logits.argmax(dim=-1), labels, num_classes)
    support = confusion.sum(dim=1)  # (C,)
    recall = confusion.diagonal().float() / support.clamp(min=1)  # (C,)
    present = support > 0
    return {
        "metrics": {
            **topk_accuracy(logits, labels),
            "mean_per_class_recall": recall[present].mean().item(),
            "n": int(labels.numel()),
            "chance": 1.0 / num_classes,
        },
        "per_class": {
            name: {"accuracy": recall[c].item(), "n": int(support[c])}
            for c, name in enumerate(classnames)
            if present[c]
        },
        "confusion": confusion.tolist(),
        "classnames": list(classnames),
    }


def ranks_of_targets(
    queries: torch.Tensor, keys: torch.Tensor, targets: torch.Tensor, block: int = 1024
) -> torch.Tensor:
    """For each query, how many keys score strictly higher than its best-scoring target.

    Args:
        queries: (Q, D) embeddings.
        keys: (K, D) embeddings.
        targets: (Q, K) boolean mask of the correct keys, or (Q,) index of the one correct key.
        block: queries scored at a time; memory O(block x K).

    Returns:
        (Q,) long ranks, 0 = a correct key is the top hit.
    """
    ranks = []
    for start in range(0, queries.shape[0], block):
        scores = queries[start : start + block] @ keys.T  # (b, K)
        target = targets[start : start + block]
        if target.dim() == 1:
            best = scores.gather(1, target.unsqueeze(1))  # (b, 1)
        else:
            best = scores.masked_fill(~target, float("-inf")).amax(dim=1, keepdim=True)  # (b, 1)
        ranks.append((scores > best).sum(dim=1))
    return torch.cat(ranks) if ranks else torch.empty(0, dtype=torch.long)


def recall_at(ranks: torch.Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Recall@k from 0-based ranks, plus the median and mean 1-based rank. The median rank is
    ``floor(median(ranks)) + 1`` with the two middle values averaged, as in VSE++ and the
    retrieval code CLIP benchmarks are usually scored with."""
    out = {f"R@{k}": (ranks < k).float().mean().item() for k in ks}
    out["median_rank"] = torch.quantile(ranks.float(), 0.5).floor().item() + 1
    out["mean_rank"] = (ranks + 1).float().mean().item()
    return out


def retrieval_metrics(
    img_emb: torch.Tensor,
    txt_emb: torch.Tensor,
    txt_image: torch.Tensor,
    ks: Sequence[int] = (1, 5, 10),
    block: int = 1024,
) -> dict[str, float]:
    """Image->text and text->image recall@k for captions ``txt_emb`` (T, D) of images
    ``img_emb`` (N, D); ``txt_image`` (T,) is the image index of each caption.

    text->image: a caption's rank is that of its own image among all images.
    image->text: an image's rank is that of its best-ranked caption among all captions (a hit at k
    if any of its captions is in the top k), the protocol of the CLIP paper's COCO/Flickr numbers.
    """
    counts = torch.bincount(txt_image, minlength=img_emb.shape[0])
    if (counts == 0).any():
        missing = int((counts == 0).nonzero()[0])
        raise ValueError(f"image {missing} has no caption: its image->text rank is undefined")
    t2i = ranks_of_targets(txt_emb, img_emb, txt_image, block)
    i2t = []
    for start in range(0, img_emb.shape[0], block):
        rows = torch.arange(start, min(start + block, img_emb.shape[0]))
        own = txt_image.unsqueeze(0) == rows.unsqueeze(1)  # (b, T)
        i2t.append(ranks_of_targets(img_emb[rows], txt_emb, own, block))
    i2t_ranks = torch.cat(i2t) if i2t else torch.empty(0, dtype=torch.long)
    out = {f"image_to_text/{k}": v for k, v in recall_at(i2t_ranks, ks).items()}
    out.update({f"text_to_image/{k}": v for k, v in recall_at(t2i, ks).items()})
    out["mean_recall"] = sum(
        out[f"{d}/R@{k}"] for d in ("image_to_text", "text_to_image") for k in ks
    ) / (2 * len(ks))
    out["images"], out["captions"] = int(img_emb.shape[0]), int(txt_emb.shape[0])
    return out
