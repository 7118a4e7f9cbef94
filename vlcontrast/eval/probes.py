"""The frozen-embedding evaluators. Linear probe and kNN: embed a labelled train set and a test
set with the frozen image tower, fit on one, score the other (the image-only modes, SimCLR and
MoCo, are judged so). Class retrieval: Recall@K, R-precision and MAP@R of a labelled set
against itself or a gallery (metric learning's protocol, ``eval/class_retrieval.py``)."""

from __future__ import annotations

from typing import Any

import torch

from vlcontrast import distributed
from vlcontrast.data.collection import class_info, open_source
from vlcontrast.distributed import print0
from vlcontrast.embed import Embedder
from vlcontrast.eval.class_retrieval import class_retrieval_metrics
from vlcontrast.eval.knn import knn_scores, shared_bank_knn_scores
from vlcontrast.eval.labels import drop_out_of_range
from vlcontrast.eval.linear_probe import refit_best, sweep_curve
from vlcontrast.eval.metrics import classification_metrics
from vlcontrast.eval_config import neighbours


def embed_train_test(embedder: Embedder, spec, split_train: bool = False) -> dict[str, Any]:
    """The labelled training and test sets' embeddings, the class names and skip counts.
    ``split_train``: each rank keeps only its share of the training set (a kNN bank), and
    the checks and class count look at every rank's."""
    if not spec.train_data:
        raise ValueError(f"train_data: {spec.kind} needs a labelled training set")
    train_source = open_source(spec, spec.train_data, spec.train_split)
    test_source = open_source(spec, spec.data, spec.split)
    try:  # before embedding: a classes file relabels ImageFolder trees in its own order
        classnames = class_info(spec, test_source)[0]
        if spec.classes:
            class_info(spec, train_source)
    except ValueError:  # a probe needs no class names: number them below
        classnames = None
    count = len(classnames) if classnames else None
    train = embedder.images(
        train_source, need_label=True, desc="embed train", gather=not split_train
    )
    test = embedder.images(test_source, need_label=True, max_samples=spec.max_samples)
    train, test = drop_out_of_range(train, count), drop_out_of_range(test, count)
    train_rows = len(train["img_emb"])
    if split_train:  # each rank's share: its rows and its out-of-range labels, summed
        key, counted = "label_out_of_range", train["skipped"]
        everyone = distributed.all_gather_objects((train_rows, counted.get(key, 0)))
        train_rows = sum(rows for rows, _ in everyone)
        if dropped := sum(drop for _, drop in everyone):
            train["skipped"] = {**counted, key: dropped}
    for name, part, rows in (
        ("train_data", train, train_rows),
        ("data", test, len(test["img_emb"])),
    ):
        if part["labels"] is None or not rows:
            raise ValueError(f"{name}: no labelled image could be read ({part['skipped']})")
    if classnames is None:
        tops = [int(part["labels"].max()) for part in (train, test) if len(part["labels"])]
        if split_train:
            tops = [top for part in distributed.all_gather_objects(tops) for top in part]
        classnames = [str(c) for c in range(max(tops) + 1)]
    skipped = {f"train/{k}": v for k, v in train["skipped"].items()}
    skipped.update(test["skipped"])
    return {
        "train": train,
        "test": test,
        "classnames": classnames,
        "skipped": skipped,
        "train_rows": train_rows,
    }


def evaluate_linear_probe(embedder: Embedder, spec) -> dict[str, Any]:
    """The probe of ``linear_probe``; under torchrun each rank holds its share of the
    training set and the ranks fit every penalty together (``linear_probe``'s note)."""
    data = embed_train_test(embedder, spec, split_train=True)
    train, test, classnames = data["train"], data["test"], data["classnames"]
    train_x, train_y, count = train["img_emb"], train["labels"], len(classnames)
    shared = dict(shared=True, device=embedder.device)
    curve = sweep_curve(
        train_x,
        train_y,
        count,
        spec.weight_decays,
        spec.val_fraction,
        positions=dataset_positions(train["order"]),
        progress=embedder.progress,
        **shared,
    )
    probe = refit_best(train_x, train_y, test["img_emb"], count, curve, **shared)
    result = classification_metrics(probe["logits"], test["labels"], classnames)
    result["metrics"]["weight_decay"] = probe["weight_decay"]
    result.update(val_accuracy=probe["val_accuracy"], skipped=data["skipped"])
    return result


def evaluate_knn(embedder: Embedder, spec) -> dict[str, Any]:
    data = embed_train_test(embedder, spec, split_train=True)  # the bank stays split
    train, test, classnames = data["train"], data["test"], data["classnames"]
    k, bank = neighbours(spec), data["train_rows"]
    if k > bank:
        name = spec.name or spec.kind
        print0(f"note: {name}: k={k} is more than the {bank} labelled images; using k={bank}")
        k = bank
    scores = shared_knn_scores(
        train, test["img_emb"], len(classnames), k, spec.temperature, embedder.device, split=True
    )
    result = classification_metrics(scores, test["labels"], classnames)
    result["skipped"] = data["skipped"]
    result["metrics"]["k"] = k
    return result


def dataset_positions(order: list[int]) -> torch.Tensor:
    """Each of this rank's rows' place among every rank's rows in dataset order (``order``:
    the rows' dataset indices, as ``embed_images`` without ``gather`` gives them)."""
    everyone = [index for part in distributed.all_gather_objects(order) for index in part]
    return torch.searchsorted(
        torch.tensor(sorted(everyone), dtype=torch.long), torch.tensor(order, dtype=torch.long)
    )


def shared_knn_scores(
    train, test_emb, num_classes: int, k: int, temperature: float, device, split: bool = False
):
    """:func:`knn_scores` of every test embedding, each rank scoring every world-th one (rank
    r rows r, r + W, ...) and every rank ending with all of them in order: without a split
    each rank did the whole search again. ``train`` is the whole bank on every rank, or with
    ``split`` this rank's share of it, searched with the other ranks
    (``knn.shared_bank_knn_scores``: no rank holds the whole bank)."""
    rank, world, n = distributed.rank(), distributed.world_size(), len(test_emb)
    bank, labels, queries = train["img_emb"], train["labels"], test_emb[rank::world]
    if split:
        mine = shared_bank_knn_scores(bank, labels, queries, num_classes, k, temperature, device)
    else:
        mine = knn_scores(bank, labels, queries, num_classes, k, temperature)
    if world == 1:
        return mine
    sizes = [len(range(r, n, world)) for r in range(world)]
    gathered = distributed.all_gather_rows(mine, sizes, device)  # (N, C), rank by rank
    order = torch.cat([torch.arange(r, n, world) for r in range(world)])
    return torch.empty_like(gathered).index_copy_(0, order, gathered)


def evaluate_class_retrieval(embedder: Embedder, spec) -> dict[str, Any]:
    queries = embedder.images(
        open_source(spec, spec.data, spec.split), need_label=True, max_samples=spec.max_samples
    )
    if queries["labels"] is None:
        raise ValueError(f"data: no labelled image could be read ({queries['skipped']})")
    gallery = None
    if spec.gallery:
        gallery = embedder.images(
            open_source(spec, spec.gallery, spec.split), need_label=True, desc="embed gallery"
        )
        if gallery["labels"] is None:
            raise ValueError(f"gallery: no labelled image could be read ({gallery['skipped']})")
    metrics = class_retrieval_metrics(
        queries["img_emb"],
        queries["labels"],
        gallery["img_emb"] if gallery else None,
        gallery["labels"] if gallery else None,
        ks=spec.recall_at,
    )
    skipped = dict(queries["skipped"])
    if gallery:
        skipped.update({f"gallery/{k}": v for k, v in gallery["skipped"].items()})
    return {"metrics": metrics, "skipped": skipped}
