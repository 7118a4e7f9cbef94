#!/usr/bin/env python
"""Do the image-only objectives learn? kNN top-1 on held-out digits after SimCLR / MoCo
pretraining, against the same backbone at random initialisation, in one run.

    python benchmarks/ssl_digits.py [--methods simclr,moco] [--epochs 60] [--batch 128] [--set K=V]

Data that needs no download: the 8x8 handwritten digits inside scikit-learn (1797 images),
upscaled to 32 px and written as caption-less shards with their ``.cls`` labels (the split of
``benchmarks/learning.py``: 20% of each class held out). Each method trains the same small
ViT (4 layers, width 128, 4-px patches at 32 px: the ``tiny`` preset's tower) with its own
objective and the ``small`` view preset
(SimCLR's CIFAR recipe: no blur) without flips (a mirrored 2 or 5 is another digit); then the
kNN evaluator (k=20, T=0.1, on unit-norm backbone features, as ``vlcontrast eval knn``) labels
the held-out images from the training images. The random-initialisation row evaluates the
untrained backbone the same way. Prints top-1, the gain over random init and wall time.

A ResNet is a poor yardstick here: random convolutions with batch norm already give 0.87 kNN
top-1 on these digits (``--model resnet10t --model-kwargs {}``), a random ViT 0.43.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learning import digits, write_corpus  # noqa: E402

from vlcontrast import config as config_lib  # noqa: E402
from vlcontrast.eval.runner import run_evaluators  # noqa: E402
from vlcontrast.models import build_model  # noqa: E402
from vlcontrast.train.loop import train  # noqa: E402

# Multi-crop on 8x8 digits upscaled to 32 px: 2 global crops of (0.3, 1), 6 local ones of
# (0.1, 0.3) at 16 px (the papers' 0.05-area crops hold about 2 of the 8x8 source pixels), no
# flip, blur or colour jitter. Measured at initialisation, the random ViT's centred features of
# two views of one digit have cosine 0.26 with crops alone and -0.01 with SwAV's jitter; with
# SwAV's jitter (0.8) its codes and loss went to uniform (log K) within 3 epochs; DINO runs
# without jitter, SwAV with the milder 0.4 of the two-view rows (below).
DIGIT_CROPS = (
    "{local_count: 6, local_size: 16, global_scale: [0.3, 1.0], local_scale: [0.1, 0.3], "
    "augment: {flip: 0, blur: 0, jitter_p: 0, grayscale: 0}}"
)
# SwAV's codes went uniform (loss log K from step 50) with the crops above, with jitter 0.4,
# epsilon 0.01-0.03, temperature 0.2, 300 or 3000 prototypes or no local crops: two crops of
# one digit got codes the network could not predict from each other, and it flattened its
# predictions instead. Larger crops without jitter (global (0.6, 1), local (0.2, 0.6)) gave a
# loss of 4.43 after 2 epochs (log 100 = 4.61) and kNN 0.693 after 30 (docs/benchmarks.md).
SWAV_DIGIT_CROPS = (
    "{local_count: 6, local_size: 16, global_scale: [0.6, 1.0], local_scale: [0.2, 0.6], "
    "augment: {flip: 0, blur: 0, jitter_p: 0, grayscale: 0}}"
)
# method -> (objective.name, its overrides)
METHODS = {
    # MoCo v2's queue: 8 batches of keys (the dataset has 1,437 training images)
    "moco": ("moco", ["objective.moco.queue_size=1024", "objective.moco.temperature=0.2"]),
    "simclr": ("simclr", ["objective.simclr.temperature=0.2"]),
    "byol": ("byol", ["objective.byol.predictor.hidden=256"]),
    "simsiam": ("simsiam", ["objective.simsiam.predictor.hidden=256"]),
    "mocov3": ("mocov3", ["objective.mocov3.predictor.hidden=256"]),
    "barlow_twins": ("barlow_twins", ["objective.barlow_twins.projector={dim: 512, hidden: 512}"]),
    # multi-crop: 2 global crops at 32 px and 6 local ones at 16 px (SwAV's 224/96 ratio is
    # 0.43; 16 px keeps whole 4-px patches)
    "swav": (
        "swav",
        [
            # larger crops than DINO's, no jitter (see SWAV_DIGIT_CROPS)
            f"objective.swav.crops={SWAV_DIGIT_CROPS}",
            "objective.swav.prototypes=100",  # SwAV's CIFAR-10 setting is 3000 for 1000 classes
            # no queue: a queue of 1024 (71% of the data) from epoch 3 sent the loss back above
            # log K (4.80 at step 100) where the run without it kept falling (4.20)
            "objective.swav.queue_size=0",
            "objective.swav.freeze_prototypes_steps=20",
            "optim.lr=5e-4",  # as DINO: at 2e-3 the loss climbed back to log K after step 60
        ],
    ),
    "dino": (
        "dino",
        [
            f"objective.dino.crops={DIGIT_CROPS}",
            # batch norm in the head (lightly's CIFAR-10 DINO head has it): without it the
            # teacher's entropy rose to log(out_dim) within 3 epochs (collapse to uniform:
            # a random ViT gives these digits near-identical features, which centring cancels)
            "objective.dino.projector={layers: 3, hidden: 256, dim: 64, bn: true, act: gelu}",
            "objective.dino.out_dim=1024",
            # a teacher whose average spans ~100 steps (DINO's 0.996 at 1,250 steps an epoch is
            # a fifth of an epoch; here 0.996 holds the teacher near its random start for most
            # of the 330 steps, and kNN fell below random init in a 4-epoch run)
            "objective.dino.momentum=0.99",
            "optim.lr=5e-4",  # DINO: 5e-4 x batch / 256 with AdamW; 2e-3 destabilised it
        ],
    ),
    "densecl": ("densecl", ["objective.densecl.queue_size=1024"]),
    # supervised, with the labels: SupCon and metric learning (issue 25's yardsticks)
    "supcon": ("supcon", []),
    "triplet": ("metric", ["objective.metric.loss=triplet", "objective.metric.miner=semi_hard"]),
    "multi_similarity": (
        "metric",
        ["objective.metric.loss=multi_similarity", "objective.metric.miner=multi_similarity"],
    ),
}


def write_digits(out: Path, seed: int) -> dict:
    """The digits corpus of ``benchmarks/learning.py`` as shards (labels in ``.cls``)."""
    train, held, names, templates = digits(seed)
    paths = write_corpus(train, held, names, templates, out)
    return {**paths, "train_size": len(train), "heldout_size": len(held)}


def overrides(method: str, data: dict, out: Path, args) -> list[str]:
    evaluator = (
        f"[{{kind: knn, data: '{data['heldout']}', train_data: '{data['train']}', k: 20}}, "
        f"{{kind: class_retrieval, data: '{data['heldout']}'}}]"
    )
    objective, extra = METHODS[method]
    return [
        "model.kind=image",
        f"objective.name={objective}",
        f"image.model={args.model}",
        f"image.model_kwargs={args.model_kwargs}",
        "image.image_size=32",
        # one head size for every method on 8x8 digits: 2 layers, 256 wide, 128 out
        f"objective.{objective}.projector={{layers: 2, hidden: 256, dim: 128, bn: true}}",
        "views.preset=small",
        "views.first.flip=0",
        "views.second.flip=0",
        f"data.train_shards={data['train']}",
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
        "eval.num_workers=0",
        *extra,
        *args.set,
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default="simclr,moco")
    parser.add_argument("--epochs", type=float, default=60)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--model", default="vit_tiny_patch16_224")
    parser.add_argument(
        "--model-kwargs", default="{patch_size: 4, embed_dim: 128, depth: 4, num_heads: 4}"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an override for every method's run, after the script's own (repeatable)",
    )
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = write_digits(tmp / "digits", args.seed)
        methods = args.methods.split(",")
        cfg = config_lib.load(None, overrides(methods[0], data, tmp, args))
        config_lib.resolve(cfg)
        torch.manual_seed(args.seed)
        start = time.perf_counter()
        first = run_evaluators(build_model(cfg).eval(), None, cfg)
        random_init = (first["knn"]["metrics"]["top1"], first["class_retrieval"]["metrics"])
        rows.append(("random init", *random_init, time.perf_counter() - start))
        for method in methods:
            start = time.perf_counter()
            summary = train(config_lib.load(None, overrides(method, data, tmp, args)))
            prefix = "class_retrieval/"
            retrieval = {
                k[len(prefix) :]: v for k, v in summary["eval"].items() if k.startswith(prefix)
            }
            rows.append(
                (method, summary["eval"]["knn/top1"], retrieval, time.perf_counter() - start)
            )
    print(
        f"\nsklearn digits at 32 px: {data['train_size']} training, {data['heldout_size']} "
        f"held-out images; {args.model}, {args.epochs:g} epochs, batch {args.batch}, lr "
        f"{args.lr:g}, seed {args.seed}{''.join(f'; {o}' for o in args.set)}; kNN k=20 and "
        f"MAP@R (held-out set against itself) on backbone features"
    )
    print(f"{'backbone':>16} | kNN top-1 | vs random | MAP@R | vs random | R@1   | wall s")
    base_top1, base_map = random_init[0], random_init[1]["map_at_r"]
    for name, top1, retrieval, seconds in rows:
        map_r, r1 = retrieval["map_at_r"], retrieval["recall@1"]
        print(
            f"{name:>16} | {top1:9.3f} | {top1 - base_top1:+9.3f} | {map_r:.3f} | "
            f"{map_r - base_map:+9.3f} | {r1:.3f} | {seconds:6.0f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
