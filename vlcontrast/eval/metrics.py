"""Evaluation metrics: pure functions on embeddings, scores and labels.

Nothing here knows about models or data: classification metrics take a score matrix and labels,
retrieval metrics take two embedding sets and which image each caption belongs to. Retrieval is
computed in blocks of captions, so memory is O(block x N) on top of the O(N x D) embeddings, never
the T x N similarity matrix (250k captions of 50k images would need 50 GB in fp32).

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


def retrieval_ranks(
    img_emb: torch.Tensor, txt_emb: torch.Tensor, txt_image: torch.Tensor, block: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """0-based ranks in both directions, scoring ``block`` captions at a time.

    Two passes over the same caption blocks (so every score is computed by the same kernel on
    the same inputs, bitwise equal in both passes): the first takes each caption's score with
    its own image, which gives the text->image ranks and each image's best own-caption score;
    the second counts, per image, the captions that beat that best score.

    Returns:
        ``i2t`` (N,) and ``t2i`` (T,) long ranks, 0 = the correct item is the top hit.
    """
    num_images = img_emb.shape[0]
    t2i, own = [], []
    for start in range(0, txt_emb.shape[0], block):
        scores = txt_emb[start : start + block] @ img_emb.T  # (b, N)
        target = scores.gather(1, txt_image[start : start + block].unsqueeze(1))  # (b, 1)
        t2i.append((scores > target).sum(dim=1))
        own.append(target.squeeze(1))
    own_scores = torch.cat(own) if own else img_emb.new_empty(0)  # (T,)
    best = img_emb.new_full((num_images,), float("-inf"))
    best = best.scatter_reduce(0, txt_image, own_scores, reduce="amax")  # (N,)
    i2t = torch.zeros(num_images, dtype=torch.long)
    for start in range(0, txt_emb.shape[0], block):
        scores = txt_emb[start : start + block] @ img_emb.T  # (b, N)
        i2t += (scores > best.unsqueeze(0)).sum(dim=0)
    return i2t, torch.cat(t2i) if t2i else torch.empty(0, dtype=torch.long)


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
    i2t_ranks, t2i = retrieval_ranks(img_emb, txt_emb, txt_image, block)
    out = {f"image_to_text/{k}": v for k, v in recall_at(i2t_ranks, ks).items()}
    out.update({f"text_to_image/{k}": v for k, v in recall_at(t2i, ks).items()})
    out["mean_recall"] = sum(
        out[f"{d}/R@{k}"] for d in ("image_to_text", "text_to_image") for k in ks
    ) / (2 * len(ks))
    out["images"], out["captions"] = int(img_emb.shape[0]), int(txt_emb.shape[0])
    return out
