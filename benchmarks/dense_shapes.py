#!/usr/bin/env python
"""Does DenseCL's dense term give better dense features than MoCo v2? Dense kNN (mean IoU of
held-out masks, ``vlcontrast eval dense-knn``) after MoCo v2 and DenseCL pretraining on the
demo's shapes, against the same backbone at random initialisation, in one run.

    python benchmarks/dense_shapes.py [--seed 0] [--objects 1] [--colours one] [--smoke]
    python benchmarks/dense_shapes.py --seeds 16-31 --jobs 2 --linear   # paired over seeds

Data that needs no download: images of ``--objects`` of the demo's shapes at 64 px with their
masks (``vlcontrast data masks``: background + 5 shape classes). By default one shape per image,
all in one colour on one ground tint (``--colours one``, ``data masks --one-colour``): the shape
(its class, size and place) is then the only thing that tells images apart, so instance
discrimination has to learn it. With the demo's colours (``--colours many``) neither method
learnt the shape classes in this budget (with the ViT named below both ended below random
init); on scenes of 3 (``--objects 3``) MoCo v2 beats random init and DenseCL does not
(docs/benchmarks.md has the rows).

The backbone is DenseCL's kind, a ResNet, made small: timm's ``resnet18`` with one basic block a
stage, widths 32-256, and the last two stages dilated (output stride 8, as segmentation
networks run a ResNet) for an 8 x 8 feature map at 64 px. Batch norm is split into 8 groups of
16 (``model.bn_split``) with MoCo's shuffled keys, the MoCo authors' one-device recipe, so no
query shares batch statistics with its key. ``--model vit_tiny_patch16_224 --model-kwargs
"{patch_size: 8, embed_dim: 128, depth: 4, num_heads: 4}"`` gives the ViT rows of the docs.
Both methods train the same backbone from the same seed with the same views (``mocov2`` preset
without blur: it erases 8-px structure; hue jitter ``--hue``), queue, temperature, key-encoder
momentum, projector and optimizer; DenseCL adds its dense head and loss (lambda 0.5). Each
backbone's feature map is then scored by dense kNN (k=20, T=0.1; fixed before the evaluator's
default became 30, and kept so every seed's row is scored alike): every held-out location
labelled by its nearest training locations, the labels spread over the pixels and compared with
the masks. Prints mean IoU, pixel accuracy, the gain over random init and the IoU of each class, and
with ``--linear`` the mean IoU of the linear segmentation probe (``eval dense-linear``) on the
same features.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import paired  # noqa: E402

from vlcontrast import config as config_lib  # noqa: E402
from vlcontrast.data.synthetic import make_masked_set  # noqa: E402
from vlcontrast.eval.runner import run_evaluators  # noqa: E402
from vlcontrast.models import build_model  # noqa: E402
from vlcontrast.models.load import load_model  # noqa: E402
from vlcontrast.train.loop import train  # noqa: E402


def overrides(method: str, data: Path, out: Path, args) -> list[str]:
    sets = f"data: '{data}/heldout/00000.tar', train_data: '{data}/train/00000.tar'"
    linear = f", {{kind: dense_linear, {sets}, weight_decays: [1e-5]}}" if args.linear else ""
    evaluator = f"[{{kind: dense_knn, {sets}, k: 20}}{linear}]"
    head = "{layers: 2, hidden: 256, dim: 128, bn: false}"
    return [
        "model.kind=image",
        f"model.bn_split={args.bn_split}",
        f"objective.name={method}",
        f"image.model={args.model}",
        f"image.model_kwargs={args.model_kwargs}",
        f"image.image_size={args.side}",
        f"objective.{method}.projector={head}",
        f"objective.{method}.queue_size={args.queue}",
        f"objective.{method}.temperature=0.2",
        f"objective.{method}.momentum={args.momentum}",
        "views.preset=mocov2",
        "views.first.blur=0",
        "views.second.blur=0",
        f"views.first.jitter=[0.4, 0.4, 0.4, {args.hue}]",
        f"views.second.jitter=[0.4, 0.4, 0.4, {args.hue}]",
        f"data.train_shards={data}/train/00000.tar",
        f"data.batch_size={args.batch}",
        "data.num_workers=1",
        "data.shuffle_buffer=2000",
        f"optim.lr={args.lr}",
        "optim.weight_decay=1e-4",
        "optim.warmup_steps=20",
        f"train.epochs={args.epochs}",
        f"train.seed={args.seed}",
        "train.log_every=100",
        "train.save_every=100000",
        "train.progress=false",
        "train.tensorboard=false",
        f"train.output_dir={out / method}",
        f"eval.evaluators={evaluator}",
    ] + (
        ["objective.densecl.dense_head={layers: 2, hidden: 256, dim: 128}"]
        if method == "densecl"
        else []
    )


def dense_eval(model, cfg) -> tuple[float, float, dict[str, float], float]:
    """Dense kNN's mean IoU, pixel accuracy and per-class IoU of ``model``'s feature map, and
    the linear segmentation probe's mean IoU (NaN without ``--linear``)."""
    results = run_evaluators(model.eval(), None, cfg)
    knn, linear = results["dense_knn"], results.get("dense_linear")
    metrics = knn["metrics"]
    return (
        metrics["miou"],
        metrics["pixel_accuracy"],
        knn["per_class_iou"],
        linear["metrics"]["miou"] if linear else float("nan"),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=float, default=20)
    parser.add_argument("--train", type=int, default=2000, help="training images")
    parser.add_argument("--heldout", type=int, default=300)
    parser.add_argument("--side", type=int, default=64)
    parser.add_argument("--objects", type=int, default=1, help="shapes per image (%(default)s)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--queue", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--hue", type=float, default=0.1, help="hue jitter (%(default)s)")
    parser.add_argument(
        "--colours",
        choices=("one", "many"),
        default="one",
        help="one: every shape in one colour on one ground, so only the shapes tell images "
        "apart (%(default)s); many: the demo's colours and ground tints",
    )
    parser.add_argument(
        "--momentum",
        type=float,
        default=0.99,
        help="key encoder momentum (%(default)s): MoCo's 0.999 moves the keys only 27%% of the "
        "way to the online encoder in 313 steps",
    )
    parser.add_argument("--model", default="resnet18", help="a timm model (%(default)s)")
    parser.add_argument(
        "--model-kwargs",
        default="{layers: [1, 1, 1, 1], channels: [32, 64, 128, 256], output_stride: 8}",
        help="its timm arguments (%(default)s)",
    )
    parser.add_argument(
        "--bn-split",
        type=int,
        default=8,
        help="batch-norm groups per batch (%(default)s; model.bn_split): a batch of 128 "
        "normalised as 8 devices of 16 would",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--linear",
        action="store_true",
        help="also score the linear segmentation probe (eval dense-linear) at L2 penalty 1e-5: "
        "validation mean IoU 0.503, 0.524 and 0.526 at 1e-4, 1e-5 and 1e-6 on seed 8's MoCo v2, "
        "and 1e-5 converges sooner; a few minutes a backbone",
    )
    parser.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="keep the masks and the two trained runs under this folder (DIR/masks, DIR/moco, "
        "DIR/densecl) to evaluate them again later; by default they go with a temporary folder. "
        "With --seeds, each seed's under DIR/sS",
    )
    parser.add_argument("--smoke", action="store_true", help="a few seconds: tiny sizes")
    parser.add_argument(
        "--seeds",
        default="",
        help="run these seeds (0-15 or 0,3,8), --jobs at a time, each in its own process with "
        "its log in --out, and print the paired comparison of DenseCL with MoCo v2",
    )
    parser.add_argument("--jobs", type=int, default=1, help="seeds run at once (%(default)s)")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("dense_shapes_runs"),
        help="with --seeds: each seed's log and result; a seed that finished there with the "
        "same arguments and code is read back, so a long study can stop and go on",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the rows to this file")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.seeds:
        return several_seeds(args, argv)
    if args.keep is not None:
        args.keep = Path(str(args.keep).format(seed=args.seed))
    if args.smoke:
        args.epochs, args.train, args.heldout, args.batch, args.queue = 1, 64, 16, 16, 64
        args.model_kwargs = "{layers: [1, 1, 1, 1], channels: [8, 8, 16, 16], output_stride: 8}"
        args.bn_split, args.linear = 2, True
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.keep if args.keep is not None else Path(scratch)
        make_masked_set(
            tmp / "masks", args.train, args.heldout, args.side, args.objects, args.colours == "one"
        )
        cfg = config_lib.load(None, overrides("moco", tmp / "masks", tmp, args))
        config_lib.resolve(cfg)
        torch.manual_seed(args.seed)
        start = time.perf_counter()
        rows.append(
            ("random init", *dense_eval(build_model(cfg), cfg), time.perf_counter() - start)
        )
        for method in ("moco", "densecl"):
            start = time.perf_counter()
            # scored once below, from the saved weights, not also at the last step
            settings = overrides(method, tmp / "masks", tmp, args) + ["eval.evaluators=[]"]
            train(config_lib.load(None, settings))
            rows.append(
                (method, *dense_eval(load_model(tmp / method)[0], cfg), time.perf_counter() - start)
            )
    print(
        f"\n{args.objects} shape(s) per image, colours: {args.colours}, with masks at "
        f"{args.side} px: {args.train} training, "
        f"{args.heldout} held-out images; {args.model} {args.model_kwargs}, {args.epochs:g} "
        f"epochs, batch {args.batch}, lr {args.lr:g}, queue {args.queue}, seed {args.seed}; "
        "dense kNN k=20" + (" and the linear probe" if args.linear else "") + " on the feature map"
    )
    print(f"{'':>12} | {'dense kNN':^30} | {'linear probe':^20} |")
    print(f"{'backbone':>12} | mean IoU | vs random | pixel acc | mean IoU | vs random | wall s")
    base, base_linear = rows[0][1], rows[0][4]
    for name, miou, acc, _, linear, seconds in rows:
        print(
            f"{name:>12} | {miou:8.3f} | {miou - base:+9.3f} | {acc:9.3f} | {linear:8.3f} | "
            f"{linear - base_linear:+9.3f} | {seconds:6.0f}"
        )
    if args.json is not None:
        fields = ("knn", "pixel_accuracy", "per_class", "linear", "seconds")
        table = {name: dict(zip(fields, values, strict=True)) for name, *values in rows}
        args.json.write_text(json.dumps({"seed": args.seed, "rows": table}))
    names = list(rows[0][3])
    print(
        "\nper-class IoU of dense kNN\n"
        + f"{'backbone':>12} | "
        + " | ".join(f"{n:>10}" for n in names)
    )
    for name, _, _, per_class, _, _ in rows:
        cells = " | ".join(f"{per_class.get(n, 0.0):10.3f}" for n in names)
        print(f"{name:>12} | {cells}")
    return 0


def child_args(argv: list[str]) -> list[str]:
    """The command line without what only the parent uses (``--seeds``, ``--jobs``, ``--out``,
    ``--keep``, ``--seed``, ``--json``)."""
    parent = ("--seeds", "--jobs", "--out", "--keep", "--seed", "--json")  # flags with a value
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in parent:
            skip = True
        elif not arg.startswith(tuple(f"{flag}=" for flag in parent)):
            out.append(arg)
    return out


def several_seeds(args, argv: list[str]) -> int:
    """Each seed of ``--seeds`` in its own run; the per-seed table and the paired comparisons."""
    seeds = paired.parse_seeds(args.seeds)
    extra = child_args(argv)
    if args.keep is not None:  # each seed's runs under KEEP/sS
        extra += ["--keep", str(args.keep / "s{seed}")]
    results = paired.run_seeds(__file__, extra, seeds, args.jobs, args.out)
    rows = {seed: result["rows"] for seed, result in results.items()}
    linear = not math.isnan(rows[seeds[0]]["moco"]["linear"])
    head = "seed | random init | MoCo v2 | DenseCL | DenseCL - MoCo v2"
    print("\ndense kNN mean IoU" + (" | linear probe mean IoU" if linear else ""))
    print(head + (" | MoCo v2 | DenseCL | DenseCL - MoCo v2" if linear else ""))
    for seed in seeds:
        r = rows[seed]
        cells = [r["random init"]["knn"], r["moco"]["knn"], r["densecl"]["knn"]]
        cells.append(cells[2] - cells[1])
        if linear:
            cells += [r["moco"]["linear"], r["densecl"]["linear"]]
            cells.append(cells[-1] - cells[-2])
        print(
            f"{seed:4d} | "
            + " | ".join(f"{c:+.3f}" if i in (3, 6) else f"{c:.3f}" for i, c in enumerate(cells))
        )
    for key, what in (("knn", "dense kNN"), ("linear", "linear probe"))[: 1 + linear]:
        moco = [rows[s]["moco"][key] for s in seeds]
        densecl = [rows[s]["densecl"][key] for s in seeds]
        mean = sum(moco) / len(moco), sum(densecl) / len(densecl)
        print(f"\n{what}: MoCo v2 {mean[0]:.4f}, DenseCL {mean[1]:.4f} (means)")
        print(paired.describe(f"{what}, DenseCL - MoCo v2", paired.paired_stats(moco, densecl)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
