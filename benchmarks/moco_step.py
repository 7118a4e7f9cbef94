#!/usr/bin/env python
"""MoCo v2 (asymmetric) train step: computing only what the loss uses vs both views through
both encoders, same model, same batch, same run.

    python benchmarks/moco_step.py [--model resnet18] [--size 64] [--batch 64] [--steps 5]

``before``: the step as it was until the tasks redesign: both views stacked into one batch of
2B, pushed through the online encoder (with autograd) and the momentum encoder, although the
loss reads only view 0's queries and view 1's keys. ``now``: ``MoCoObjective`` as it is: view 0
through the online encoder, view 1 through the momentum encoder (MoCo's own code). Each step
is forward, loss, backward, SGD step and ``after_step`` (momentum update, enqueue); the figure
is samples/s over ``--steps`` steps after one warm-up step, the best of ``--repeats``, and the
ratio now / before. Both variants start from the same weights and see the same batch; their
losses at the first step are printed too (they differ only by the batch-norm statistics of a
joint 2B forward against one of B).
"""

from __future__ import annotations

import argparse
import copy
import time
from types import SimpleNamespace

import torch

from vlcontrast import config as config_lib
from vlcontrast.models import build_model
from vlcontrast.objectives.base import halves, step_loss, two_views
from vlcontrast.objectives.moco import MoCoObjective


class BothViewsMoCo(MoCoObjective):
    """The earlier MoCo v2 step: both views through both encoders, in one forward each."""

    def outputs(self, batch):
        images = two_views(batch)
        q_a, q_b = halves(self.embed(images)["emb"])
        k_a, k_b = halves(self.keys(images))
        return {"q_a": q_a, "q_b": q_b, "k_a": k_a, "k_b": k_b}


def make(cls, cfg, model):
    task = cls(cfg.objective.moco)
    run = SimpleNamespace(model=cfg.model, train=SimpleNamespace(steps=1000, seed=0, fsdp=False))
    torch.manual_seed(1)
    task.setup(copy.deepcopy(model), run, cfg.data.batch_size)
    return task


def time_steps(task, batch, steps: int) -> tuple[float, float]:
    optimizer = torch.optim.SGD([p for p in task.parameters() if p.requires_grad], lr=0.03)
    task.train()
    first = None
    for step in range(steps + 1):
        if step == 1:
            start = time.perf_counter()
        loss = step_loss(task, batch)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        task.after_step(step + 1)
        first = float(loss.detach()) if first is None else first
    return steps * len(batch["images"]) / (time.perf_counter() - start), first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    cfg = config_lib.load(
        None,
        [
            "model.kind=image",
            "objective.name=moco",
            f"image.model={args.model}",
            f"image.image_size={args.size}",
            f"data.batch_size={args.batch}",
            f"objective.moco.queue_size={args.batch * 16}",
        ],
    )
    torch.manual_seed(0)
    model = build_model(cfg)
    gen = torch.Generator().manual_seed(0)
    shape = (args.batch, 2, 3, args.size, args.size)
    batch = {"images": torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen)}
    results = {}
    for name, cls in (("before", BothViewsMoCo), ("now", MoCoObjective)):
        runs = [time_steps(make(cls, cfg, model), batch, args.steps) for _ in range(args.repeats)]
        results[name] = (max(r[0] for r in runs), runs[0][1])
        print(f"{name:>6}: {results[name][0]:7.1f} samples/s  (first loss {results[name][1]:.4f})")
    ratio = results["now"][0] / results["before"][0]
    print(
        f"MoCo v2 asymmetric step, {args.model} at {args.size} px, batch {args.batch}, "
        f"{torch.get_num_threads()} threads: now / before = {ratio:.2f}x samples/s"
    )


if __name__ == "__main__":
    main()
