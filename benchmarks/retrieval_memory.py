#!/usr/bin/env python
"""Peak memory and time of retrieval scoring: dense similarity matrix vs vlcontrast's blockwise.

    python benchmarks/retrieval_memory.py [--images 2000,10000] [--captions-per-image 5]

For N images with 5 captions each (COCO's shape) and D=512 embeddings, each in a fresh
subprocess:

- ``dense``: the straightforward computation (as in the reference trainer's retrieval metrics):
  the full (T, N) similarity matrix, ``argsort`` of every row for text->image and of every
  column for image->text, then the position of the correct item;
- ``blockwise``: ``vlcontrast.eval.metrics.retrieval_metrics`` (1024 queries at a time, ranks by
  counting higher scores, never the full matrix).

Memory is the peak RSS added by the call (inputs are in the baseline). Both variants run in the
same invocation; the printed ratios are dense / blockwise memory and blockwise / dense time, and
the recall figures of the two are checked to agree.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from measure import GIB, mem_available, peak_bytes, reset_peak, rss_bytes, run_isolated


def dense_metrics(img_emb, txt_emb, txt_image) -> dict[str, float]:
    scores = txt_emb @ img_emb.T  # (T, N)
    t2i_order = scores.argsort(dim=1, descending=True)  # (T, N)
    t2i = (t2i_order == txt_image.unsqueeze(1)).float().argmax(dim=1)  # (T,)
    del t2i_order
    i2t_order = scores.T.argsort(dim=1, descending=True)  # (N, T)
    owner = txt_image[i2t_order]  # (N, T) image of each ranked caption
    i2t = (owner == torch.arange(len(img_emb)).unsqueeze(1)).float().argmax(dim=1)  # (N,)
    return {
        "image_to_text/R@1": (i2t < 1).float().mean().item(),
        "text_to_image/R@1": (t2i < 1).float().mean().item(),
        "text_to_image/R@10": (t2i < 10).float().mean().item(),
    }


def run_one(variant: str, images: int, per_image: int, dim: int) -> dict:
    from vlcontrast.eval.metrics import retrieval_metrics

    gen = torch.Generator().manual_seed(0)
    img_emb = F.normalize(torch.randn(images, dim, generator=gen), dim=-1)
    txt_image = torch.arange(images).repeat_interleave(per_image)  # (T,)
    noise = torch.randn(len(txt_image), dim, generator=gen)
    txt_emb = F.normalize(img_emb[txt_image] + 1.2 * noise, dim=-1)
    fn = dense_metrics if variant == "dense" else retrieval_metrics
    warm = 256  # thread pool and BLAS buffers (a full 1024-caption block), unmeasured
    fn(img_emb[:warm], txt_emb[: warm * per_image], txt_image[: warm * per_image])
    reset_peak()
    base = rss_bytes()
    start = time.perf_counter()
    metrics = fn(img_emb, txt_emb, txt_image)
    seconds = time.perf_counter() - start
    keep = ("image_to_text/R@1", "text_to_image/R@1", "text_to_image/R@10")
    return {
        "seconds": seconds,
        "added_bytes": peak_bytes() - base,
        "metrics": {k: metrics[k] for k in keep},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", default="2000,10000", help="comma-separated image counts N")
    parser.add_argument("--captions-per-image", type=int, default=5)
    parser.add_argument("--dim", type=int, default=512, help="embedding width D")
    parser.add_argument("--one", nargs=2, metavar=("VARIANT", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    per = args.captions_per_image
    if args.one:
        print(json.dumps(run_one(args.one[0], int(args.one[1]), per, args.dim)))
        return

    print(
        f"retrieval metrics, {per} captions per image, D={args.dim}, float32, "
        f"{torch.get_num_threads()} CPU threads; memory = peak RSS added by the call"
    )
    header = (
        f"{'N':>7} {'T':>7} | {'dense s':>8} {'dense GiB':>10} | {'block s':>8} "
        f"{'block GiB':>10} | {'mem dense/block':>15} {'time block/dense':>16}"
    )
    print(header)
    print("-" * len(header))
    per_entry = 40.0  # dense bytes per (caption, image) pair; re-estimated from each run
    for images in [int(n) for n in args.images.split(",")]:
        common = [str(images), "--captions-per-image", str(per), "--dim", str(args.dim)]
        block = run_isolated(__file__, ["--one", "blockwise", *common])
        # dense holds the (T, N) scores, int64 argsorts and masks: bytes grow with T x N
        need = per_entry * images * images * per
        if need > 0.8 * mem_available():
            dense_cols, ratios = f"{'skipped':>8} {need / GIB:>9.1f}*", ""
        else:
            dense = run_isolated(__file__, ["--one", "dense", *common])
            per_entry = dense["added_bytes"] / (images * images * per)
            dense_cols = f"{dense['seconds']:>8.2f} {dense['added_bytes'] / GIB:>10.3f}"
            mem = dense["added_bytes"] / max(block["added_bytes"], 1)
            ratios = f"{mem:>14.1f}x {block['seconds'] / dense['seconds']:>15.2f}x"
            if dense["metrics"] != block["metrics"]:
                ratios += f"  METRICS DIFFER: {dense['metrics']} vs {block['metrics']}"
        block_cols = f"{block['seconds']:>8.2f} {block['added_bytes'] / GIB:>10.3f}"
        print(f"{images:>7} {images * per:>7} | {dense_cols} | {block_cols} | {ratios}", flush=True)
    if ratios == "":
        print(
            "* skipped: the dense computation would need about this much (scaled by T x N from "
            "the largest size measured), more than 80% of MemAvailable"
        )


if __name__ == "__main__":
    main()
