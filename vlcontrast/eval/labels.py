"""Labels outside the class list: skipped and counted, not a crash.

img2dataset and many Hugging Face datasets write -1 for "unlabelled", and a classes file can be
shorter than the labels in the data. Such images cannot be scored: they are dropped from the
embedded set and counted under ``label_out_of_range`` with the other skip reasons.
"""

from __future__ import annotations

from typing import Any


def drop_out_of_range(embedded: dict[str, Any], num_classes: int | None) -> dict[str, Any]:
    """``embedded`` (``embed_images``' result) without the images whose label is negative or,
    when ``num_classes`` is given, not below it."""
    labels = embedded["labels"]
    if labels is None:
        return embedded
    keep = labels >= 0
    if num_classes is not None:
        keep &= labels < num_classes
    dropped = int((~keep).sum())
    if not dropped:
        return embedded
    index = keep.nonzero().squeeze(1)  # (N',)
    out = dict(embedded)
    out["img_emb"], out["labels"] = embedded["img_emb"][index], labels[index]
    out["keys"] = [embedded["keys"][i] for i in index.tolist()]
    if embedded.get("captions") is not None:
        out["captions"] = [embedded["captions"][i] for i in index.tolist()]
    if "order" in embedded:  # a rank's share: each row's index in the dataset
        out["order"] = [embedded["order"][i] for i in index.tolist()]
    skipped = dict(embedded["skipped"])
    skipped["label_out_of_range"] = skipped.get("label_out_of_range", 0) + dropped
    out["skipped"] = skipped
    if not len(index):
        out["labels"] = None  # nothing left to score
    return out
