#!/usr/bin/env python
"""How many neighbours should dense kNN vote over? Mean IoU of ``vlcontrast eval dense-knn``
at several k for each checkpoint, each embedded once and scored at every k by the evaluator's
own functions (``eval/dense_knn.py``: ``dense_sets``, ``score_knn``), so each cell equals
``vlcontrast eval dense-knn --k K`` on that checkpoint.

    python benchmarks/dense_shapes.py --seeds 17,20 --jobs 2 --keep KEEP   # backbones to score
    python benchmarks/dense_k.py KEEP/s17/moco KEEP/s17/densecl --random-init \\
        --train-data 'KEEP/s17/masks/train/00000.tar' --data 'KEEP/s17/masks/heldout/00000.tar'

``--random-init`` adds the first checkpoint's architecture at its initialisation
(``torch.manual_seed(0)``), the baseline every pretraining has to beat. The rows in
docs/evaluation.md come from this script; the evaluator's default (30) is the number of
Hummingbird's open evaluation, not a value tuned on these rows.
"""

from __future__ import annotations

import argparse
import sys

import torch

from vlcontrast.config import EvaluatorConfig
from vlcontrast.embed import eval_transform
from vlcontrast.eval.dense_knn import dense_sets, score_knn
from vlcontrast.models import build_model
from vlcontrast.models.load import load_model


def mean_ious(model, cfg, spec, ks: list[int], temperature: float) -> list[float]:
    sets = dense_sets(model.eval(), "cpu", eval_transform(cfg), spec)
    return [score_knn(sets, k, temperature)["metrics"]["miou"] for k in ks]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", help="checkpoints or run folders")
    parser.add_argument("--train-data", required=True, help="labelled shards with mask.png")
    parser.add_argument("--data", required=True, help="held-out shards with mask.png")
    parser.add_argument("--k", type=int, nargs="+", default=[5, 10, 20, 30, 50, 100, 200])
    parser.add_argument("--temperature", type=float, default=0.1, help="(%(default)s)")
    parser.add_argument(
        "--random-init",
        action="store_true",
        help="also score the first checkpoint's architecture at its initialisation (seed 0)",
    )
    args = parser.parse_args(argv)
    spec = EvaluatorConfig(kind="dense_knn", data=args.data, train_data=args.train_data)
    rows = []
    for index, path in enumerate(args.checkpoints):
        model, _, cfg = load_model(path)
        if index == 0 and args.random_init:
            torch.manual_seed(0)
            rows.append(
                ("random init", mean_ious(build_model(cfg), cfg, spec, args.k, args.temperature))
            )
        rows.append((path, mean_ious(model, cfg, spec, args.k, args.temperature)))
    print(f"dense kNN mean IoU by k (T {args.temperature})")
    print("| checkpoint | " + " | ".join(f"k {k}" for k in args.k) + " |")
    print("|---" * (len(args.k) + 1) + "|")
    for name, values in rows:
        print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
