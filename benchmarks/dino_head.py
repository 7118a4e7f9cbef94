#!/usr/bin/env python
"""Seconds a DINO training step with the paper's 65,536-output head against the fitted default
(``objective.dino.out_dim: 0``: 4,096 below ViT-S/16's size) on the README's image-only line:
``model.preset=tiny`` (a 32-px ViT of 4-px patches, 0.8M parameters), the demo's coloured
shapes as image-only shards, runs alternating in this process, same data and seed.

    python benchmarks/dino_head.py [--steps 5] [--batch 50] [--repeats 2]

The first step of each run (start-up, first decode) is left out of its mean; each head's
figure is the median over ``--repeats`` runs, alternated so that a load on the machine falls
on both.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from local_crops import step_seconds  # noqa: E402

from vlcontrast.data.shard_writer import write_shards  # noqa: E402
from vlcontrast.data.synthetic import samples  # noqa: E402

HEADS = {"65536 outputs (DINO's, before)": ["objective.dino.out_dim=65536"], "fitted": []}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5, help="steps a run (%(default)s)")
    parser.add_argument("--batch", type=int, default=50, help="(%(default)s)")
    parser.add_argument("--repeats", type=int, default=2, help="runs a head (%(default)s)")
    args = parser.parse_args(argv)
    if args.steps < 3:
        parser.error("--steps: at least 3 (the first step is not timed)")
    times: dict[str, list[float]] = {name: [] for name in HEADS}
    with tempfile.TemporaryDirectory() as tmp:
        shards = Path(tmp) / "shards"
        items = [{k: v for k, v in s.items() if k != "txt"} for s in samples(200, seed=0)]
        write_shards(items, shards, 200)
        for run in range(args.repeats):
            for i, (name, extra) in enumerate(HEADS.items()):
                out = Path(tmp) / f"run{run}_{i}"
                times[name].append(
                    step_seconds(out, "dino", args.steps, args.batch, shards, extra)[0]
                )
        fitted = (Path(tmp) / "run0_1" / "config.json").read_text()
    out_dim = int(fitted.split('"out_dim": ')[1].split(",")[0])
    before, after = (statistics.median(t) for t in times.values())
    print(
        f"DINO, model.preset=tiny (32 px), batch {args.batch}, median of {args.repeats} runs, "
        f"mean of steps 2-{args.steps}:"
    )
    print(f"  last layer of 65536 outputs (before): {before:.2f} s/step")
    print(f"  last layer of {out_dim} outputs (the default): {after:.2f} s/step")
    print(f"  speed-up: {before / after:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
