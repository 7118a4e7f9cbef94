#!/usr/bin/env python
"""Training-step throughput and model FLOP utilisation (MFU) on this machine.

    python benchmarks/train_step.py [--configs tiny,small] [--precisions no,bf16] [--seconds 20]

For each config and precision it times the real training step (``vlcontrast.train.loop.
train_step``: objective forward, backward, clipping, AdamW) on a fixed in-memory batch, so data
loading is excluded. It prints samples/s and MFU = model FLOPs per step / step time / peak.
Model FLOPs are counted by ``torch.utils.flop_counter`` on one step (forward + backward). The
peaks are matmul FLOP/s measured in the same run for PyTorch's default fp32 path (``F.linear``,
MKL on x86), oneDNN fp32 (``mkldnn_linear`` on mkldnn tensors) and bf16 (``F.linear`` on bf16
tensors), each with the best of a few square sizes.

``--switches`` measures the efficiency switches instead, each in a fresh process against the
same config with every switch off, in the same run: samples/s and the peak memory the training
steps add (RSS on CPU, ``torch.cuda.max_memory_allocated`` on a GPU), with their ratios.
``grad_checkpointing``, ``patch_dropout`` (0.5) and ``compile`` run on ``small`` (ViT);
``channels_last`` on ``tiny`` (a ResNet, which it is for).

Configs: ``tiny`` is the demo (64 px timm ``test_resnet`` + 2-layer BERT, batch 128); ``small`` is a
ViT-S/32-class image tower at 224 px with a 6-layer, 384-wide BERT, batch 32.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from vlcontrast import config as config_lib
from vlcontrast.config import Config
from vlcontrast.demo import demo_values
from vlcontrast.models import build_model
from vlcontrast.objectives import build_objective
from vlcontrast.train.loop import make_accelerator, train_step
from vlcontrast.train.optim import build_optimizer
from vlcontrast.train.precision import Precision

SMALL = {
    "data": {"batch_size": 32},
    "image": {"model": "vit_small_patch32_224", "image_size": 224},
    "text": {
        "config": {
            "model_type": "bert",
            "vocab_size": 30522,
            "hidden_size": 384,
            "num_hidden_layers": 6,
            "num_attention_heads": 6,
            "intermediate_size": 1536,
        },
        "pooling": "cls",
        "context_length": 32,
    },
    "model": {"embed_dim": 384},
}
CONFIGS = {"tiny": demo_values(), "small": SMALL}


def timed(fn, seconds: float) -> float:
    """Mean seconds per call over at least ``seconds`` (after one warm-up call)."""
    fn()
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and calls >= 2:
            return elapsed / calls


def matmul_peaks(seconds: float) -> dict[str, float]:
    """Best GFLOP/s of (n x n) @ (n x n) on each path, over a few sizes."""
    peaks = {"default fp32": 0.0, "oneDNN fp32": 0.0, "bf16": 0.0}
    for n in (512, 1024, 2048):
        flops = 2 * n**3
        x, w = torch.randn(n, n), torch.randn(n, n)
        xm, wm = x.to_mkldnn(), w.to_mkldnn()
        xb, wb = x.bfloat16(), w.bfloat16()
        paths = {
            "default fp32": lambda x=x, w=w: F.linear(x, w),
            "oneDNN fp32": lambda x=xm, w=wm: torch._C._nn.mkldnn_linear(x, w, None),
            "bf16": lambda x=xb, w=wb: F.linear(x, w),
        }
        for name, fn in paths.items():
            peaks[name] = max(peaks[name], flops / timed(fn, seconds / 3) / 1e9)
    return peaks


def make_batch(cfg: Config, vocab: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    b, s, length = cfg.data.batch_size, cfg.image.image_size, cfg.text.context_length
    return {
        "images": torch.randn(b, 3, s, s, generator=gen),
        "input_ids": torch.randint(5, vocab, (b, length), generator=gen),
        "attention_mask": torch.ones(b, length, dtype=torch.long),
    }


SWITCHES = {
    "grad_checkpointing": ("small", {"train": {"grad_checkpointing": True}}),
    "patch_dropout": ("small", {"image": {"patch_dropout": 0.5}}),
    "compile": ("small", {"train": {"compile": True}}),
    "channels_last": ("tiny", {"train": {"channels_last": True}}),
}


def bench_config(
    name: str, precision: str, seconds: float, switch: dict | None = None
) -> dict[str, float]:
    from vlcontrast.train.model_setup import efficiency_switches

    cfg = config_lib.apply(Config(), CONFIGS[name])
    if switch:
        config_lib.apply(cfg, switch)
    cfg.train.precision = precision
    accelerator = make_accelerator()
    amp = Precision(precision, accelerator.device)
    model = efficiency_switches(build_model(cfg), cfg)
    task = build_objective(cfg.objective)  # the task owns the model, as in the loop
    task.setup(model, cfg, cfg.data.batch_size)
    optimizer = build_optimizer(task, cfg.optim)
    task, optimizer = accelerator.prepare(task, optimizer)
    batch = make_batch(cfg, cfg.text.config["vocab_size"])
    state = {"step": 0}

    def step():
        train_step(accelerator, amp, task, optimizer, batch, cfg, state)

    step()  # warm-up, allocator and oneDNN primitive caches (and compilation)
    if switch is not None:  # memory and speed only
        import measure

        cuda = accelerator.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        measure.reset_peak()
        base = torch.cuda.memory_allocated() if cuda else measure.rss_bytes()
        seconds_per_step = timed(step, seconds)
        peak = torch.cuda.max_memory_allocated() if cuda else measure.peak_bytes()
        return {"samples_per_s": cfg.data.batch_size / seconds_per_step, "added_bytes": peak - base}
    with FlopCounterMode(display=False) as counter:
        step()
    seconds_per_step = timed(step, seconds)
    return {
        "samples_per_s": cfg.data.batch_size / seconds_per_step,
        "step_s": seconds_per_step,
        "gflop_per_step": counter.get_total_flops() / 1e9,
    }


def run_switches(seconds: float, precision: str, names: list[str]) -> None:
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from measure import GIB, run_isolated

    print(f"efficiency switches, {precision} precision, each against all-off in a fresh process")
    print(
        f"{'switch':<19} {'config':<6} {'off samples/s':>13} {'on':>8} {'speed':>7} "
        f"{'off GiB':>8} {'on GiB':>8} {'memory':>7}"
    )
    for name in names:
        config, switch = SWITCHES[name]
        common = ["--seconds", str(seconds), "--precisions", precision, "--configs", config]
        off = run_isolated(__file__, [*common, "--one", "{}"])
        on = run_isolated(__file__, [*common, "--one", json.dumps(switch)])
        print(
            f"{name:<19} {config:<6} {off['samples_per_s']:13.1f} {on['samples_per_s']:8.1f} "
            f"{on['samples_per_s'] / off['samples_per_s']:6.2f}x "
            f"{off['added_bytes'] / GIB:8.3f} {on['added_bytes'] / GIB:8.3f} "
            f"{on['added_bytes'] / max(off['added_bytes'], 1):6.2f}x",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="tiny,small")
    parser.add_argument("--precisions", default="no,bf16")
    parser.add_argument("--seconds", type=float, default=15.0, help="timing budget per case")
    parser.add_argument(
        "--switches",
        nargs="*",
        default=None,
        help="switches to measure (none named: all of " + ", ".join(SWITCHES) + ")",
    )
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        import json

        switch = json.loads(args.one)
        print(json.dumps(bench_config(args.configs, args.precisions, args.seconds, switch)))
        return
    if args.switches is not None:
        run_switches(args.seconds, args.precisions.split(",")[0], args.switches or list(SWITCHES))
        return
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"cpu capability {torch.backends.cpu.get_cpu_capability()}"
    )

    peaks = matmul_peaks(args.seconds / 3)
    print("\nmatmul peak (best of n = 512, 1024, 2048):")
    for path, gflops in peaks.items():
        print(
            f"  {path:<13} {gflops:8.1f} GFLOP/s   "
            f"({gflops / peaks['default fp32']:.2f}x default fp32)"
        )

    print(
        f"\n{'config':<6} {'precision':<9} {'samples/s':>10} {'step s':>8} {'GFLOP/step':>11} "
        f"{'achieved':>9}  MFU vs default fp32 / oneDNN fp32 / bf16 peak"
    )
    results = {}
    for name in args.configs.split(","):
        for precision in args.precisions.split(","):
            r = bench_config(name, precision, args.seconds)
            results[name, precision] = r
            achieved = r["gflop_per_step"] / r["step_s"]
            mfu = " / ".join(f"{achieved / p:6.1%}" for p in peaks.values())
            print(
                f"{name:<6} {precision:<9} {r['samples_per_s']:10.1f} {r['step_s']:8.3f} "
                f"{r['gflop_per_step']:11.2f} {achieved:7.1f}GF  {mfu}"
            )
    print()
    for name in args.configs.split(","):
        if (name, "no") in results and (name, "bf16") in results:
            ratio = results[name, "bf16"]["samples_per_s"] / results[name, "no"]["samples_per_s"]
            print(f"{name}: bf16 autocast throughput = {ratio:.2f}x fp32")


if __name__ == "__main__":
    main()
