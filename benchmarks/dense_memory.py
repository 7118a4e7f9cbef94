#!/usr/bin/env python
"""Peak memory of reading a masked set for the dense evaluators: all at once vs streamed.

    python benchmarks/dense_memory.py [--images 1000] [--side 224]

The demo's shapes with masks (``vlcontrast data masks``) at ``--side`` px, and a stand-in
backbone (an 8-px patchify convolution to 64 features: an 8 x 8 grid per 64 px, as a dilated
ResNet's), each variant in a fresh subprocess:

- ``whole``: what the dense evaluators did before streaming (and what a direct implementation
  does): decode every image and mask (masks as int64) into memory, encode them all, then the
  majority label of every patch from a one-hot of every mask at once;
- ``streamed``: ``vlcontrast.eval.dense_knn``'s ``masked_features`` (images decoded and encoded
  a batch at a time, only features and uint8 masks kept) and ``patch_labels`` (64 masks at a
  time).

Memory is the peak RSS added by the call. Both run in the same invocation; the ratio is whole /
streamed, and the features and patch labels of the two are checked to agree.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import GIB, peak_bytes, reset_peak, rss_bytes, run_isolated  # noqa: E402

from vlcontrast.data.image import CropResize  # noqa: E402
from vlcontrast.eval import dense_knn as dk  # noqa: E402


class PatchConv(torch.nn.Module):
    """An 8-px patchify convolution to 64 features (``feature_map`` contract)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 64, 8, stride=8)

    def forward(self, images, feature_map=True):
        return {"img_map": self.conv(images.float() / 255)}


def whole(model, pattern: str, transform, classes: int):
    """Every image and mask in memory, then every feature, then every patch label at once."""
    read = dk.read_masked(pattern, transform)
    masks = read["masks"].long()  # (N, S, S) int64, as the evaluators held them
    feat = dk.patch_features(model, read["images"], "cpu")
    valid = masks < classes
    onehot = F.one_hot(torch.where(valid, masks, classes), classes + 1).float()
    counts = F.adaptive_avg_pool2d(onehot.permute(0, 3, 1, 2), tuple(feat.shape[1:3]))
    best = counts.argmax(dim=1)
    return feat, torch.where(best == classes, -1, best)


def streamed(model, pattern: str, transform, classes: int):
    read = dk.masked_features(model, "cpu", transform, pattern)
    return read["feat"], dk.patch_labels(read["masks"], tuple(read["feat"].shape[1:3]), classes)


def run_one(variant: str, pattern: str, warm: str, side: int) -> dict:
    model, transform = PatchConv().eval(), CropResize(side, "center")
    fn = whole if variant == "whole" else streamed
    with torch.no_grad():  # thread pools and first-call buffers on 16 images, unmeasured
        fn(model, warm, transform, 6)
    reset_peak()
    base = rss_bytes()
    start = time.perf_counter()
    with torch.no_grad():
        feat, labels = fn(model, pattern, transform, 6)
    seconds = time.perf_counter() - start
    added = peak_bytes() - base
    return {
        "seconds": seconds,
        "added_bytes": added,
        "feat_sum": float(feat.double().sum()),
        "labels": labels.flatten().tolist()[:: max(1, labels.numel() // 4096)],
        "shape": list(feat.shape),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1000, help="masked images (%(default)s)")
    parser.add_argument("--side", type=int, default=224, help="their side in px (%(default)s)")
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)  # VARIANT SHARDS WARM_SHARDS
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(*args.one, args.side)))
        return
    from vlcontrast.data.synthetic import make_masked_set

    with tempfile.TemporaryDirectory() as tmp:
        make_masked_set(tmp, args.images, 1, args.side)
        make_masked_set(f"{tmp}/warm", 16, 1, args.side)
        shards = [f"{tmp}/train/00000.tar", f"{tmp}/warm/train/00000.tar"]
        runs = {
            v: run_isolated(__file__, ["--one", v, *shards, "--side", str(args.side)])
            for v in ("whole", "streamed")
        }
    first, second = runs["whole"], runs["streamed"]
    agree = first["shape"] == second["shape"] and first["labels"] == second["labels"]
    agree = agree and abs(first["feat_sum"] - second["feat_sum"]) <= 1e-6 * abs(first["feat_sum"])
    n, h, w, f = first["shape"]
    print(
        f"{args.images} masked images at {args.side} px, a {h} x {w} x {f} feature map each; "
        f"{torch.get_num_threads()} CPU threads; memory = peak RSS added by the call"
    )
    print(f"{'variant':>9} | {'seconds':>8} | {'GiB':>7}")
    for name, run in runs.items():
        print(f"{name:>9} | {run['seconds']:8.1f} | {run['added_bytes'] / GIB:7.3f}")
    ratio = first["added_bytes"] / max(second["added_bytes"], 1)
    features = n * h * w * f * 4 / GIB
    print(
        f"memory whole / streamed: {ratio:.1f}x (the features alone: {features:.3f} GiB); "
        f"time streamed / whole: {second['seconds'] / first['seconds']:.2f}x; "
        + ("features and patch labels agree" if agree else "RESULTS DIFFER")
    )


if __name__ == "__main__":
    main()
