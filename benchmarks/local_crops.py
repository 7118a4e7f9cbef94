#!/usr/bin/env python
"""Seconds a training step of SwAV or DINO with the local crops at their old fixed 96 px
against the default (``crops.local_size: 0``, 96/224 of ``image.image_size`` on the patch grid),
on the README's image-only line: ``model.preset=tiny`` (a 32-px ViT of 4-px patches), the
demo's coloured shapes as image-only shards, one run each in this process, same data and seed.

    python benchmarks/local_crops.py [--method dino] [--steps 4] [--batch 50]

The first step of each run (start-up, first decode) is left out of the mean.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
from pathlib import Path

from vlcontrast import cli
from vlcontrast.data.shard_writer import write_shards
from vlcontrast.data.synthetic import samples


def step_seconds(out: Path, method: str, steps: int, batch: int, shards: Path, extra: list[str]):
    args = [
        "train",
        "model.preset=tiny",
        "model.kind=image",
        f"objective.name={method}",
        f"data.train_shards={shards}",
        f"data.batch_size={batch}",
        f"train.steps={steps}",
        "train.log_every=1",
        "data.num_workers=1",
        f"train.output_dir={out}",
        *extra,
    ]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        if cli.main(args) != 0:
            raise SystemExit(f"training failed: vlcontrast {' '.join(args)}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    times = [row["time"] for row in rows if "train/loss" in row]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    config = json.loads((out / "config.json").read_text())
    return sum(gaps) / len(gaps), config["objective"][method]["crops"]["local_size"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="dino", choices=["dino", "swav"])
    parser.add_argument("--steps", type=int, default=4, help="steps a run (%(default)s)")
    parser.add_argument("--batch", type=int, default=50, help="(%(default)s)")
    args = parser.parse_args(argv)
    if args.steps < 3:
        parser.error("--steps: at least 3 (the first step is not timed)")
    with tempfile.TemporaryDirectory() as tmp:
        shards = Path(tmp) / "shards"
        items = [{k: v for k, v in s.items() if k != "txt"} for s in samples(200, seed=0)]
        write_shards(items, shards, 200)
        fixed, fixed_size = step_seconds(
            Path(tmp) / "fixed",
            args.method,
            args.steps,
            args.batch,
            shards,
            [f"objective.{args.method}.crops.local_size=96"],
        )
        fitted, fitted_size = step_seconds(
            Path(tmp) / "fitted", args.method, args.steps, args.batch, shards, []
        )
    print(
        f"{args.method}, model.preset=tiny (32 px), batch {args.batch}, mean of steps 2-"
        f"{args.steps}:"
    )
    print(f"  local crops at {fixed_size} px (fixed, before): {fixed:.2f} s/step")
    print(f"  local crops at {fitted_size} px (the default):  {fitted:.2f} s/step")
    print(f"  speed-up: {fixed / fitted:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
