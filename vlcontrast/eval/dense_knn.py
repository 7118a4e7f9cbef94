"""Dense kNN: label every pixel of a held-out image by its patch's nearest labelled patches.

A frozen-feature test of dense representations (what DenseCL trains, judged in its paper by
fine-tuned detection and segmentation; the patch-kNN protocol is Hummingbird's, Balazevic et
al. 2023, without its learned attention). Each image is centre-cropped and resized to the
model's size (``eval_transform``), its mask cut and resized the same way (nearest); the model's
feature map (``feature_map=True``: a CNN's last stage, a ViT's patch tokens) gives one unit-norm
feature per patch. A training patch takes the majority label of its pixels (a patch that is
mostly ``ignore`` is left out); a held-out patch is labelled by a weighted vote of its k most
cosine-similar training patches (``eval/knn.py``, weights ``exp(sim / T)``), its label spread
over its pixels, and scored against the full-resolution mask: mean IoU over the classes present,
pixel accuracy, per-class IoU and the pixel confusion matrix.

Data: WebDataset shards whose samples hold an image (``jpg``, ``png``, ...) and its mask
``mask.png``: one 8-bit channel of the image's size, each pixel a class index, ``255`` ignored.
``classes.json`` beside the shards (a list of names, index = pixel value) names the classes.
``vlcontrast data masks`` writes such a set from the demo's shapes. A sample without a mask,
with a mask of another size, a colour-coded mask, a label over 255 or an unreadable image is
skipped and counted by reason (``data/masks.py``'s ``class_indices`` says which PNG modes are read).
"""

from __future__ import annotations

import io
import itertools
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from vlcontrast import distributed
from vlcontrast.data.collection import read_classes
from vlcontrast.data.image import decode_image
from vlcontrast.data.limits import MAX_PIXELS
from vlcontrast.data.masks import class_indices, open_mask
from vlcontrast.data.skip import SkipSample
from vlcontrast.data.sources import expand_urls
from vlcontrast.data.tar_reader import iter_samples
from vlcontrast.eval.knn import shared_bank_knn_scores
from vlcontrast.eval_config import neighbours

IGNORE = 255
NEAREST = Image.Resampling.NEAREST
IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")


def masked_samples(
    pattern: str,
    transform,
    skipped: list[tuple[int, str]],
    max_samples: int = 0,
    max_pixels: int = MAX_PIXELS,
    share: tuple[int, int] = (0, 1),
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Each readable (index, image (3, S, S) uint8, mask (S, S) uint8) of the shards
    ``pattern``, cut by ``transform`` (a centre ``CropResize``) alike, up to ``max_samples``;
    ``index`` counts the samples in the shards. ``share`` (rank, world): only every world-th
    sample from the rank-th is decoded. Each sample skipped is appended to ``skipped`` as
    (index, reason); a bad shard by the first share only."""
    rank, world = share
    count, index = 0, -1

    def shard_skip(reason: str) -> None:
        if rank == 0:
            skipped.append((index, reason))

    for url in expand_urls(pattern):
        for raw in iter_samples(url, shard_skip):
            index += 1
            if index % world != rank:
                continue
            found = next((raw[k] for k in IMAGE_KEYS if k in raw), None)
            if found is None or "mask.png" not in raw:
                skipped.append((index, "missing_image" if found is None else "missing_mask"))
                continue
            try:
                image = decode_image(found, transform, random.Random(0), max_pixels)
                with Image.open(io.BytesIO(found)) as header, open_mask(raw["mask.png"]) as mask:
                    if header.size != mask.size:
                        raise SkipSample("mask_size_mismatch")
                    cut = cut_mask(mask, transform)
            except SkipSample as skip:
                skipped.append((index, skip.reason))
                continue
            yield index, image, cut
            count += 1
            if count == max_samples:
                return


def read_masked(
    pattern: str, transform, max_samples: int = 0, max_pixels: int = MAX_PIXELS
) -> dict[str, Any]:
    """All images (N, 3, S, S) and masks (N, S, S) of the shards ``pattern`` (uint8), with skip
    counts by reason (one process)."""
    skipped = []
    found = list(masked_samples(pattern, transform, skipped, max_samples, max_pixels))
    counts = dict(Counter(reason for _, reason in skipped))
    if not found:
        raise ValueError(f"{pattern}: no image with a mask could be read ({counts})")
    _, images, masks = zip(*found, strict=True)
    return {"images": torch.stack(images), "masks": torch.stack(masks), "skipped": counts}


def masked_features(
    model,
    device,
    transform,
    pattern: str,
    max_samples=0,
    max_pixels=MAX_PIXELS,
    batch_size=64,
    desc: str = "",
    gather: bool = True,
) -> dict[str, Any]:
    """The unit-norm patch features (N, h, w, F) and uint8 masks (N, S, S) of the shards
    ``pattern``, read and encoded ``batch_size`` images at a time (only the features and masks
    are kept, never every decoded image), with skip counts by reason; a progress bar named
    ``desc`` if one is given. Under a process group each rank decodes and encodes every
    world-th sample, and every rank ends with the whole set in the shards' order; without
    ``gather``, with its own share only, each row's place in that order in ``positions`` (of
    ``total``)."""
    share = (distributed.rank(), distributed.world_size())
    skipped, order, feats, masks = [], [], [], []
    samples = masked_samples(pattern, transform, skipped, max_samples, max_pixels, share)
    bar = tqdm(desc=desc, unit="img", leave=False) if desc else None
    while batch := list(itertools.islice(samples, batch_size)):
        index, images, cuts = zip(*batch, strict=True)
        order.extend(index)
        feats.append(patch_features(model, torch.stack(images), device, batch_size))
        masks.append(torch.stack(cuts))
        if bar is not None:
            bar.update(len(batch) * share[1])
    if bar is not None:
        bar.close()
    if share[1] == 1:  # read in order, and no further than max_samples
        counts = dict(Counter(reason for _, reason in skipped))
        if not feats:
            raise ValueError(f"{pattern}: no image with a mask could be read ({counts})")
        out = {"feat": torch.cat(feats), "masks": torch.cat(masks), "skipped": counts}
        return out | {"positions": torch.arange(len(out["feat"])), "total": len(out["feat"])}
    plan = share_plan(pattern, order, skipped, feats, masks, max_samples)
    if gather:
        return gather_shares(plan, feats, masks, device)
    return own_share(plan, feats, masks)


def share_plan(pattern, order, skipped, feats, masks, max_samples) -> dict[str, Any]:
    """Where every rank's rows of :func:`masked_features` (``order``: each row's sample index)
    go in the shards' order, cut at ``max_samples`` as one process would read them (``keep``:
    the rows of the ranks' concatenation, in that order), with the skips one process would have
    met."""
    shapes = (feats[0].shape[1:], masks[0].shape[1:]) if feats else None
    everyone = distributed.all_gather_objects((order, skipped, shapes))
    order = [i for part in everyone for i in part[0]]
    keep = sorted(range(len(order)), key=order.__getitem__)[: max_samples or None]
    # a skip after the last sample kept is one a single process would not have read
    last = order[keep[-1]] if max_samples and len(keep) == max_samples else float("inf")
    counts = dict(Counter(reason for part in everyone for i, reason in part[1] if i < last))
    if not keep:
        raise ValueError(f"{pattern}: no image with a mask could be read ({counts})")
    sizes = [len(part[0]) for part in everyone]
    return {
        "keep": keep,
        "sizes": sizes,
        "start": sum(sizes[: distributed.rank()]),  # this rank's first row in the concatenation
        "shapes": next(part[2] for part in everyone if part[2] is not None),
        "skipped": counts,
    }


def gather_shares(plan, feats, masks, device) -> dict[str, Any]:
    """Every rank's share, in the shards' order (:func:`share_plan`), on every rank."""
    feat, mask = own_rows(plan, feats, masks)
    pick = torch.tensor(plan["keep"])
    gathered = {
        "feat": distributed.all_gather_rows(feat, plan["sizes"], device)[pick],
        "masks": distributed.all_gather_rows(mask, plan["sizes"], device)[pick],
    }
    total = len(plan["keep"])
    return gathered | {"skipped": plan["skipped"], "positions": torch.arange(total), "total": total}


def own_rows(plan, feats, masks) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's features and masks as two tensors (empty, of the set's shapes, if none)."""
    feat_shape, mask_shape = plan["shapes"]
    feat = torch.cat(feats) if feats else torch.empty(0, *feat_shape)
    mask = torch.cat(masks) if masks else torch.empty(0, *mask_shape, dtype=torch.uint8)
    return feat, mask


def own_share(plan, feats, masks) -> dict[str, Any]:
    """This rank's rows that one process would have kept, with their places in the shards'
    order (:func:`share_plan`)."""
    start, (feat, mask) = plan["start"], own_rows(plan, feats, masks)
    place = {row: position for position, row in enumerate(plan["keep"])}
    mine = [j for j in range(plan["sizes"][distributed.rank()]) if start + j in place]
    return {
        "feat": feat[mine],
        "masks": mask[mine],
        "skipped": plan["skipped"],
        "positions": torch.tensor([place[start + j] for j in mine], dtype=torch.long),
        "total": len(plan["keep"]),
    }


def cut_mask(mask: Image.Image, transform) -> torch.Tensor:
    """The mask cut and resized as the image (``transform``: a centre ``CropResize``; its
    shortest-side variant too), nearest: (S, S) uint8."""
    try:
        mask = class_indices(mask)
        s = transform.size
        if transform.shortest:  # shortest side to S (or S / eval_crop), the centred square
            w, h = mask.size
            short = transform.shortest_size()
            scale = short / min(w, h)
            mask = mask.resize(
                (max(short, round(w * scale)), max(short, round(h * scale))), NEAREST
            )
        left, top, w, h = transform.box(*mask.size, random.Random(0))
        if transform.shortest:
            left, top, w, h = (mask.size[0] - s) // 2, (mask.size[1] - s) // 2, s, s
        mask = mask.crop((left, top, left + w, top + h)).resize((s, s), NEAREST)
        return torch.from_numpy(np.asarray(mask, dtype=np.uint8).copy())
    except SkipSample:
        raise
    except Exception:  # noqa: BLE001 - PIL raises many types for a truncated PNG
        raise SkipSample("corrupt_mask") from None


@torch.no_grad()
def patch_features(model, images: torch.Tensor, device, batch_size: int = 64) -> torch.Tensor:
    """Unit-norm features of every patch: (N, h, w, F) float32 on the CPU."""
    out = []
    for start in range(0, len(images), batch_size):
        img_map = model(images=images[start : start + batch_size].to(device), feature_map=True)
        img_map = img_map["img_map"].float()
        if img_map.ndim == 4:  # a CNN's (B, F, h, w)
            grid = img_map.permute(0, 2, 3, 1)
        else:  # a ViT's (B, N, F) tokens, row by row
            side = int(round(img_map.shape[1] ** 0.5))
            grid = img_map.reshape(len(img_map), side, side, -1)
        out.append(F.normalize(grid, dim=-1).cpu())
    return torch.cat(out)


def patch_labels(masks: torch.Tensor, grid: tuple[int, int], num_classes: int) -> torch.Tensor:
    """(N, S, S) pixel masks -> (N, h, w) the majority label of each patch's pixels (its share
    by adaptive average pooling; ties to the lower label); -1 where most pixels are ``IGNORE``
    (or any label from ``num_classes`` on). 64 masks and one class at a time, over the classes
    present: a one-hot of the masks would be C + 1 floats a pixel (150 classes of ADE20K at
    224 px: 4 GB for 64 masks)."""
    out = []
    for chunk in masks.split(64):
        present = [c for c in torch.unique(chunk).tolist() if c < num_classes]
        top = torch.zeros(len(chunk), *grid)
        best = torch.full((len(chunk), *grid), -1, dtype=torch.long)
        for label in [*present, num_classes]:  # ascending, the ignored share last
            pixels = chunk >= num_classes if label == num_classes else chunk == label
            share = F.adaptive_avg_pool2d(pixels[:, None].float(), grid)[:, 0]  # (n, h, w)
            wins = share > top  # strictly: an earlier label keeps a tie, as an arg max does
            best = torch.where(wins, label, best)
            top = torch.where(wins, share, top)
        out.append(torch.where(best == num_classes, -1, best))
    return torch.cat(out)


def segmentation_metrics(
    pred: torch.Tensor, masks: torch.Tensor, classnames: list[str], device=None
) -> dict[str, Any]:
    """Mean IoU over the classes present (in the masks or the predictions), pixel accuracy,
    per-class IoU and the (true, predicted) pixel confusion matrix; with a ``device``, of every
    rank's pixels (the confusion matrices summed through it)."""
    c = len(classnames)
    confusion = torch.zeros(c * c, dtype=torch.long)
    for true, guess in zip(masks.split(64), pred.split(64), strict=True):  # int64 copies bounded
        true = true.long()
        keep = true < c
        confusion += torch.bincount(true[keep] * c + guess[keep].long(), minlength=c * c)
    if device is not None and distributed.world_size() > 1:
        confusion = distributed.all_reduce(confusion.to(device)).cpu()
    confusion = confusion.view(c, c)
    tp = confusion.diag().double()
    union = confusion.sum(0).double() + confusion.sum(1).double() - tp
    present = union > 0
    iou = tp / union.clamp(min=1)
    metrics = {
        "miou": float(iou[present].mean()) if present.any() else 0.0,
        "pixel_accuracy": float(tp.sum() / confusion.sum().clamp(min=1)),
    }
    per_class = {name: float(iou[i]) for i, name in enumerate(classnames) if present[i]}
    return {"metrics": metrics, "per_class_iou": per_class, "confusion": confusion.tolist()}


def dense_sets(
    model,
    device,
    transform,
    spec,
    batch_size: int = 64,
    max_pixels: int = MAX_PIXELS,
    progress: bool = False,
    whole_train: bool = True,
) -> dict[str, Any]:
    """What a dense evaluator scores: the unit-norm patch features (N, h, w, F) and masks
    (N, S, S) of ``spec.train_data`` (``train_feat``, ``train_masks``: all of them on every
    rank; without ``whole_train``, this rank's share only, as dense kNN's bank, each row's
    place in the shards' order in ``train_positions``) and of this
    rank's share of ``spec.data`` (``test_feat``, ``test_masks``, its first
    ``spec.max_samples``; ``test_positions``: each row's place in the shards' order), the
    ``classnames`` and the skipped samples of both by reason; progress bars if ``progress``.
    Each rank scores its share of the held-out images and the metrics sum their pixels."""
    model.eval()
    read, desc = (device, transform), ("embed train", "embed") if progress else ("", "")
    train = masked_features(
        model, *read, spec.train_data, 0, max_pixels, batch_size, desc[0], gather=whole_train
    )
    test = masked_features(
        model, *read, spec.data, spec.max_samples, max_pixels, batch_size, desc[1], gather=False
    )
    labels = (largest_label(test["masks"]), largest_label(train["masks"]))
    top = max(label for pair in distributed.all_gather_objects(labels) for label in pair)
    if top < 0:
        raise ValueError(f"{spec.data}: every mask pixel is {IGNORE} (ignored); nothing to score")
    skipped = {f"train/{k}": v for k, v in train["skipped"].items()}
    return {
        "classnames": read_classnames(spec, top + 1),
        "train_feat": train["feat"],
        "train_masks": train["masks"],
        "test_feat": test["feat"],
        "test_masks": test["masks"],
        "test_positions": test["positions"],
        "train_positions": train["positions"],
        "skipped": {**skipped, **test["skipped"]},
    }


def largest_label(masks: torch.Tensor) -> int:
    """The largest label in ``masks`` other than :data:`IGNORE`, -1 if none (64 at a time)."""
    top = -1
    for chunk in masks.split(64):
        labelled = chunk[chunk != IGNORE]
        if len(labelled):
            top = max(top, int(labelled.max()))
    return top


def dense_knn(
    model, device, transform, spec, batch_size=64, max_pixels=MAX_PIXELS, progress=False
) -> dict[str, Any]:
    """Patch kNN of ``spec.data``'s pixels from ``spec.train_data``'s patches (``k``,
    ``temperature``, ``max_samples``). Under a process group each rank keeps only its share
    of the training patches, and the ranks search the whole bank together
    (``knn.shared_bank_knn_scores``)."""
    sets = dense_sets(
        model, device, transform, spec, batch_size, max_pixels, progress, whole_train=False
    )
    result = score_knn(sets, neighbours(spec), spec.temperature, device)
    result["skipped"] = sets["skipped"]
    result["examples"] = scored_examples(spec, transform, max_pixels, result.pop("pixels"), sets)
    return result


def score_knn(sets: dict[str, Any], k: int, temperature: float, device="cpu") -> dict[str, Any]:
    """The metrics of :func:`dense_knn` on embedded ``sets`` (:func:`dense_sets`) at ``k`` and
    ``temperature``, with the predicted ``pixels`` (this rank's held-out rows, (N, S, S)), so
    one embedding can be scored at several k (``benchmarks/dense_k.py``). Under a process
    group the training patches may be this rank's share: the bank is searched across ranks."""
    classnames, train_feat, test_feat = sets["classnames"], sets["train_feat"], sets["test_feat"]
    grid = tuple(train_feat.shape[1:3])
    train_lab = patch_labels(sets["train_masks"], grid, len(classnames)).flatten()
    bank = train_feat.flatten(0, 2)[train_lab >= 0]  # (P, F) labelled training patches
    scores = shared_bank_knn_scores(
        bank,
        train_lab[train_lab >= 0],
        test_feat.flatten(0, 2),
        len(classnames),
        k,
        temperature,
        device,
    )
    patches = sum(distributed.all_gather_objects(len(bank)))
    pred = scores.argmax(dim=1).view(len(test_feat), *grid)  # (N, h, w)
    size = sets["test_masks"].shape[-1]
    pixels = torch.cat(  # each patch's label over its pixels, a byte each as the masks
        [
            F.interpolate(chunk[:, None].float(), size=(size, size), mode="nearest")[:, 0].to(
                torch.uint8
            )
            for chunk in pred.split(64)
        ]
    )
    result = segmentation_metrics(pixels, sets["test_masks"], classnames, device)
    result["metrics"].update(k=min(k, patches), patches=patches)
    return result | {"classnames": classnames, "pixels": pixels}


EXAMPLES = 6  # held-out images drawn by --plot: image, true mask, prediction


def scored_examples(spec, transform, max_pixels: int, pred: torch.Tensor, sets) -> dict:
    """The first :data:`EXAMPLES` held-out images (N, 3, S, S), their masks and the labels
    ``pred`` (this rank's rows of ``sets["test_positions"]``) gives them (N, S, S), for
    ``report.save_segmentation_png``: the predictions gathered from the ranks that hold them,
    the images read again (a few decodes), as only features are kept."""
    first = (sets["test_positions"] < EXAMPLES).nonzero().flatten()
    shown = distributed.all_gather_objects(
        (sets["test_positions"][first].tolist(), pred[first].clone())
    )
    by_place = {}
    for places, rows in shown:
        by_place.update(zip(places, rows, strict=True))
    read = read_masked(spec.data, transform, len(by_place), max_pixels)
    pred = torch.stack([by_place[place] for place in sorted(by_place)])
    return {"images": read["images"], "masks": read["masks"], "pred": pred}


def read_classnames(spec, count: int) -> list[str]:
    """``spec.classes`` or the ``classes.json`` beside the evaluation shards (a list of
    names, index = pixel value); else the labels as numbers."""
    path = Path(spec.classes) if spec.classes else Path(expand_urls(spec.data)[0]).parent
    path = path / "classes.json" if path.is_dir() else path
    if not path.is_file():
        if spec.classes:
            raise ValueError(f"classes: no file {spec.classes}")
        return [str(i) for i in range(count)]
    names = read_classes(path)[0]
    if len(names) < count:
        raise ValueError(f"{path}: {len(names)} class names, but the masks use {count} labels")
    return names


def run_dense(evaluate, kind: str, embedder, spec) -> dict[str, Any]:
    """A dense evaluator (``dense_knn``, ``dense_linear``) on ``embedder``'s model, crops and
    limits, once ``spec`` names its training set."""
    if not spec.train_data:
        raise ValueError(f"train_data: {kind} needs a training set with masks")
    return evaluate(
        embedder.model,
        embedder.device,
        embedder.transform,
        spec,
        embedder.batch_size,
        embedder.max_pixels,
        embedder.progress and distributed.is_main(),
    )


def evaluate_dense_knn(embedder, spec) -> dict[str, Any]:
    """The evaluator entry (``eval.evaluators`` kind ``dense_knn``)."""
    return run_dense(dense_knn, "dense_knn", embedder, spec)
