"""Linear segmentation probe: one linear classifier on every patch of a frozen feature map.

The linear protocol of frozen dense features (DINO's and Leopart's linear segmentation: a 1 x 1
convolution on the patch features, its logits upsampled bilinearly to the pixels). The same
data, crops and unit-norm patch features as dense kNN (``eval/dense_knn.py``); then:

- every feature is standardised by the training patches' mean and standard deviation per
  dimension (unit-norm features are small in each dimension, so an L2 penalty weighs far more on
  them: on a small ResNet's features of the shapes set, the best penalty was below the default
  sweep's 1e-6 without it, mean IoU 0.433 there against 0.516 standardised, at 1e-5 or 1e-6);
- each training patch is labelled with the majority of its pixels (a patch mostly ``ignore`` is
  left out) and a multinomial logistic regression with an L2 penalty is fitted to them
  (``eval/linear_probe.py``: strictly convex, L-BFGS to convergence, so the optimiser does not
  change the answer);
- the penalty is chosen from ``weight_decays`` by the mean IoU of a held-out ``val_fraction``
  of the training *images* (the patches of one image are not independent samples), ties going
  to the stronger penalty; the chosen one is refitted on every training image;
- each held-out image's patch logits are upsampled bilinearly to its mask (a per-pixel linear
  classifier on bilinearly interpolated features: interpolation and a linear map commute), the
  arg max is each pixel's label, and the pixels are scored as dense kNN's: mean IoU over the
  classes present, pixel accuracy, per-class IoU and the confusion matrix.

Under torchrun each rank holds only its share of the training images' patches (as dense kNN's
bank): the standardisation's sums, the fit's objective (``linear_probe``'s ``shared``) and the
validation confusion matrices are summed over the ranks, and the validation images are drawn
over every rank's in the shards' order, so every rank ends with one process's answer.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from vlcontrast.data.limits import MAX_PIXELS
from vlcontrast.distributed import all_gather_objects
from vlcontrast.eval.dense_knn import (
    dense_sets,
    patch_labels,
    run_dense,
    scored_examples,
    segmentation_metrics,
)
from vlcontrast.eval.linear_probe import fit_logistic, over_penalties, summed, validation_rows


def pixel_labels(feat: torch.Tensor, weight, bias, size: int) -> torch.Tensor:
    """(N, h, w, F) patch features -> (N, size, size) the arg max of their logits ``feat @
    weight + bias`` upsampled bilinearly (align_corners False, as a 1 x 1 conv head's); 16
    images at a time, as the upsampled logits are C floats a pixel."""
    out, dtype = [], torch.uint8 if weight.shape[1] <= 256 else torch.long  # a byte a pixel
    for chunk in feat.split(16):
        logits = (chunk.float() @ weight + bias).permute(0, 3, 1, 2)  # (n, C, h, w)
        up = F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False)
        out.append(up.argmax(dim=1).to(dtype))
    return torch.cat(out)


def standardise(train: torch.Tensor, *others: torch.Tensor, device=None) -> list[torch.Tensor]:
    """``train`` (..., F) and ``others`` less the mean and over the standard deviation of each
    dimension of ``train``'s features (a constant dimension is only centred); with a
    ``device``, of every rank's ``train`` (float64 sums, summed through it)."""
    flat = train.flatten(0, -2)
    sums = torch.zeros(3, flat.shape[1], dtype=torch.float64)  # count, sum, sum of squares
    for chunk in flat.split(1 << 16):
        chunk = chunk.double()
        sums[0] += len(chunk)
        sums[1] += chunk.sum(dim=0)
        sums[2] += chunk.square().sum(dim=0)
    if device is not None:
        sums = summed(sums, device)
    n = sums[0].clamp(min=2)
    mean = sums[1] / n
    std = ((sums[2] - n * mean.square()).clamp(min=0) / (n - 1)).sqrt()  # unbiased, as .std()
    mean, std = mean.float(), torch.where(std > 1e-6, std, torch.ones_like(std)).float()
    return [(feat - mean) / std for feat in (train, *others)]


def fit_patches(
    feat: torch.Tensor, masks: torch.Tensor, num_classes: int, weight_decay: float, device=None
):
    """The logistic regression of the labelled patches of ``feat`` (N, h, w, F) on their
    majority labels from ``masks`` (N, S, S): ``weight`` (F, C), ``bias`` (C,); with a
    ``device``, of every rank's patches together."""
    labels = patch_labels(masks, tuple(feat.shape[1:3]), num_classes).flatten()
    keep = labels >= 0
    labelled = keep.sum().double().reshape(1)
    if not (summed(labelled, device) if device is not None else labelled).item():
        raise ValueError("train_data: every training patch is mostly ignored (255); nothing to fit")
    shared = dict(shared=device is not None, device=device or "cpu")
    return fit_logistic(feat.flatten(0, 2)[keep], labels[keep], num_classes, weight_decay, **shared)


def dense_linear(
    model, device, transform, spec, batch_size=64, max_pixels=MAX_PIXELS, progress=False
) -> dict[str, Any]:
    """The linear probe of ``spec.train_data``'s patches scored on ``spec.data``'s pixels
    (``weight_decays``, ``val_fraction``, ``max_samples``); each rank holds its share of the
    training images (the module's note)."""
    sets = dense_sets(
        model, device, transform, spec, batch_size, max_pixels, progress, whole_train=False
    )
    classnames, masks = sets["classnames"], sets["train_masks"]
    feat, test_feat = standardise(sets["train_feat"], sets["test_feat"], device=device)
    c, size = len(classnames), masks.shape[-1]
    total = sum(all_gather_objects(len(feat)))  # training images on every rank
    fit, val = validation_rows(sets["train_positions"], total, spec.val_fraction)
    curve = {}
    sweep = sorted(spec.weight_decays) if len(spec.weight_decays) > 1 and total > 1 else []
    for weight_decay in over_penalties(sweep, progress):
        weight, bias = fit_patches(feat[fit], masks[fit], c, weight_decay, device)
        pred = pixel_labels(feat[val], weight, bias, size)
        scored = segmentation_metrics(pred, masks[val], classnames, device)
        curve[weight_decay] = scored["metrics"]["miou"]
    best = (
        max(sorted(curve, reverse=True), key=curve.__getitem__)
        if curve
        else max(spec.weight_decays)
    )
    weight, bias = fit_patches(feat, masks, c, best, device)
    pred = pixel_labels(test_feat, weight, bias, sets["test_masks"].shape[-1])
    result = segmentation_metrics(pred, sets["test_masks"], classnames, device)
    result["metrics"].update(weight_decay=best)
    result["val_miou"] = curve
    result["classnames"] = classnames
    result["skipped"] = sets["skipped"]
    result["examples"] = scored_examples(spec, transform, max_pixels, pred, sets)
    return result


def evaluate_dense_linear(embedder, spec) -> dict[str, Any]:
    """The evaluator entry (``eval.evaluators`` kind ``dense_linear``)."""
    if not spec.weight_decays:
        raise ValueError("weight_decays: give at least one L2 penalty to sweep")
    return run_dense(dense_linear, "dense_linear", embedder, spec)
