#!/usr/bin/env python
"""One command that measures vlcontrast on one GPU, every figure beside a baseline timed in the
same run (issue 26). Under 8 minutes on one H100/H200.

    python benchmarks/gpu.py [--out gpu.json] [--parts step,loss,loader,index,fsdp]
    python benchmarks/gpu.py --smoke    # every part at toy sizes on the CPU (the test suite)

Parts (``gpu_parts.py`` holds the data, index and FSDP parts):

- ``step``: the CLIP train step of ``model.preset=b32`` at 224 px, bf16 autocast, batch 256,
  through the trainer's own ``train_step`` (objective, AdamW fused on a GPU, clipping at 1.0,
  the logit-scale clamp, TF32), against OpenCLIP's ViT-B-32 with ``ClipLoss`` and the AdamW of
  ``open_clip_train`` at the same batch and precision; each eager and compiled
  (``train.compile``, ``torch.compile``). Images are on the device already: uint8 for
  vlcontrast (normalised in the model), normalised floats for OpenCLIP, as each one's loader
  hands them over. Figures: samples/s, peak memory allocated, and MFU = the FLOPs of one step
  (torch's ``FlopCounterMode``) / step time / the GPU's dense bf16 peak (the datasheet's for a
  known GPU, and the bf16 matmul rate measured here).
- ``loss``: vlcontrast's tiled loss against OpenCLIP's ``ClipLoss`` at batch 65,536, D 512,
  forward + backward: seconds and peak memory (a baseline out of memory is a result).
- ``loader``: the trainer's loader over generated JPEG shards (512x384, crop to 224) with
  ``data.num_workers`` at its default for this machine, against webdataset + PIL + torchvision
  with the same workers: samples/s, and per worker.
- ``index``: ``index build`` over those shards with a b32 checkpoint (images/s, against the
  image tower's forward on batches already in memory), and the latency of a text query over
  1M stored 512-d vectors: the b32 text tower, then exact search on the device, against faiss
  flat on the CPU.
- ``fsdp``: a one-GPU FSDP2 train step of b32 against the unsharded step, and a sharded
  checkpoint round trip (save, restore onto a fresh sharded model, every tensor equal) against
  the single-file one.

It writes one JSON (every figure, the sizes, the device) and prints a table. A part that fails
prints its error; the others still run and the script exits 1.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import time
import traceback
from datetime import date
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

FULL = {
    "preset": "b32",
    "image": 224,
    "batch": 256,
    "compile": True,
    "loss_batch": 65536,
    "loss_dim": 512,
    "images": 4096,
    "jpeg": (512, 384),
    "vectors": 1_000_000,
    "vector_dim": 512,
    "queries": 200,
    "fsdp_batch": 128,
    "seconds": 8.0,
    "repeats": 3,
    "vocab": 49408,  # CLIP's BPE vocabulary: the b32 text tower's embedding rows
}
SMOKE = {
    "preset": "tiny",
    "image": 32,
    "batch": 8,
    "compile": True,
    "loss_batch": 512,
    "loss_dim": 32,
    "images": 256,
    "jpeg": (96, 72),
    "vectors": 3000,
    "vector_dim": 32,
    "queries": 5,
    "fsdp_batch": 4,
    "seconds": 0.2,
    "repeats": 1,  # warm-up calls, and the fewest timed ones
    "vocab": 1024,  # with CLIP's 49,408 rows Adam took a fifth of the smoke's step time (cProfile)
}
# OpenCLIP's shape of the tiny preset (presets.py), for the smoke run's baseline
OPENCLIP_TINY = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 32, "layers": 4, "width": 128, "patch_size": 4, "head_width": 32},
    "text_cfg": {"context_length": 32, "width": 128, "heads": 4, "layers": 4},
}
# Dense bf16 tensor-core peaks from NVIDIA's datasheets (FLOP/s), matched in order
DATASHEET_BF16 = [
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("GH200", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("A10", 125e12),
]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step, device: torch.device, seconds: float, repeats: int = 3) -> float:
    """Seconds per call of ``step`` after ``repeats`` calls (compilation happens there), over
    ``seconds`` and at least ``repeats`` calls."""
    for _ in range(repeats):
        step()
    sync(device)
    calls, start = 0, time.perf_counter()
    while True:
        step()
        calls += 1
        sync(device)
        elapsed = time.perf_counter() - start
        if calls >= repeats and elapsed >= seconds:
            return elapsed / calls


def reset_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> float | None:
    """GiB allocated at the peak since :func:`reset_memory` (None on a CPU: RSS in one process
    would mix the variants)."""
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def counted_flops(step) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return float(counter.get_total_flops())


def bf16_peaks(device: torch.device, seconds: float) -> dict[str, float | None]:
    """The datasheet's dense bf16 peak of this GPU (None if unknown) and the bf16 matmul rate
    measured here (the best of a few square sizes)."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    datasheet = next((peak for key, peak in DATASHEET_BF16 if key in name), None)
    best = 0.0
    for n in (2048, 4096, 8192) if device.type == "cuda" else (256, 512):
        a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
        b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
        best = max(best, 2 * n**3 / timed(lambda a=a, b=b: a @ b, device, seconds / 3))
    return {"datasheet": datasheet, "measured": best}


def fake_batch(sizes: dict, device: torch.device, context: int, uint8: bool) -> dict:
    gen = torch.Generator().manual_seed(0)
    b, s = sizes["batch"], sizes["image"]
    images = torch.randint(0, 256, (b, 3, s, s), dtype=torch.uint8, generator=gen)
    if not uint8:
        from vlcontrast.data.image import normalize_uint8

        mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
        images = normalize_uint8(images, mean, std)
    vocab = sizes["vocab"]
    ids = torch.randint(1, vocab - 1, (b, context), generator=gen)
    ids[:, -1] = vocab - 1  # end of text last: OpenCLIP pools at the highest id
    return {
        "images": images.to(device),
        "input_ids": ids.to(device),
        "attention_mask": torch.ones(b, context, dtype=torch.long, device=device),
    }


def our_step(sizes: dict, device: torch.device, compiled: bool, sharded: bool = False):
    """vlcontrast's training step as the loop runs it: (step function, FLOP-counting twin)."""
    from vlcontrast import config as config_lib
    from vlcontrast.objectives import build_objective
    from vlcontrast.train import fsdp
    from vlcontrast.train.loop import make_accelerator, train_step
    from vlcontrast.train.model_setup import build_training_model, resolve_model_settings, set_tf32
    from vlcontrast.train.optim import build_optimizer
    from vlcontrast.train.precision import Precision

    batch_size = sizes["fsdp_batch"] if sharded else sizes["batch"]
    overrides = [
        f"model.preset={sizes['preset']}",
        f"text.config.vocab_size={sizes['vocab']}",
        f"data.batch_size={batch_size}",
        "train.precision=bf16",
        f"train.compile={str(compiled).lower()}",
    ]
    cfg = config_lib.load(None, overrides)
    resolve_model_settings(cfg)
    set_tf32(True, device)
    accelerator = make_accelerator()
    torch.manual_seed(0)
    model = build_training_model(cfg, accelerator)
    task = build_objective(cfg.objective)
    task.setup(model, cfg, batch_size)
    task.to(device)
    if sharded:
        fsdp.shard(model, device)
    optimizer = build_optimizer(task, cfg.optim)
    precision = Precision("bf16", device)
    batch = fake_batch({**sizes, "batch": batch_size}, device, cfg.text.context_length, True)
    state = {"step": 0}

    def step():
        train_step(accelerator, precision, task, optimizer, batch, cfg, state)
        state["step"] += 1

    return step, batch_size


def openclip_step(sizes: dict, device: torch.device, compiled: bool):
    """OpenCLIP's step as ``open_clip_train``'s ``train_one_epoch`` runs it (bf16 autocast,
    ``ClipLoss``, AdamW with its decay groups and defaults, the logit-scale clamp)."""
    import open_clip

    torch.manual_seed(0)
    if sizes["preset"] == "b32":
        model = open_clip.create_model("ViT-B-32", output_dict=True)
    else:
        text_cfg = {**OPENCLIP_TINY["text_cfg"], "vocab_size": sizes["vocab"]}
        model = open_clip.model.CLIP(**{**OPENCLIP_TINY, "text_cfg": text_cfg}, output_dict=True)
    model.to(device)
    context = model.context_length
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "logit_scale" in n]
    decay = [p for n, p in model.named_parameters() if not (p.ndim < 2 or "logit_scale" in n)]
    groups = [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": 0.2}]
    optimizer = torch.optim.AdamW(groups, lr=5e-4, betas=(0.9, 0.98), eps=1e-6)
    loss_fn = open_clip.ClipLoss()
    trainee = torch.compile(model) if compiled else model
    batch = fake_batch(sizes, device, context, False)

    def step():
        optimizer.zero_grad()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = trainee(batch["images"], batch["input_ids"])
            loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))

    return step, sizes["batch"]


def part_step(sizes: dict, device: torch.device) -> dict[str, Any]:
    peaks = bf16_peaks(device, sizes["seconds"])
    rows: dict[str, Any] = {"peak_flops": peaks}
    variants = [("vlcontrast", False), ("openclip", False)]
    if sizes["compile"]:
        variants += [("vlcontrast", True), ("openclip", True)]
    for who, compiled in variants:
        make = our_step if who == "vlcontrast" else openclip_step
        reset_memory(device)
        step, batch = make(sizes, device, compiled)
        step()  # warm: the optimizer's state exists before the FLOPs are counted
        flops = None if compiled else counted_flops(step)
        reset_memory(device)
        seconds = timed(step, device, sizes["seconds"], sizes["repeats"])
        name = f"{who}{' compiled' if compiled else ''}"
        rows[name] = {
            "samples_per_s": batch / seconds,
            "step_s": seconds,
            "peak_gib": peak_memory(device),
            "flops_per_step": flops if flops is not None else rows[who]["flops_per_step"],
        }
        for kind, peak in peaks.items():
            achieved = rows[name]["flops_per_step"] / seconds
            rows[name][f"mfu_{kind}"] = achieved / peak if peak else None
        del step
        print(f"  step {name}: {batch / seconds:.1f} samples/s", flush=True)
    return rows


def part_loss(sizes: dict, device: torch.device) -> dict[str, Any]:
    import open_clip
    import torch.nn.functional as F

    from vlcontrast.losses.tiled import tiled_clip_loss

    n, dim = sizes["loss_batch"], sizes["loss_dim"]
    baseline = open_clip.ClipLoss()
    ways = {
        "vlcontrast tiled": lambda i, t, s: tiled_clip_loss(i, t, s, tile_size=1024),
        "openclip ClipLoss": lambda i, t, s: baseline(i, t, s),
    }
    rows: dict[str, Any] = {}
    for name, loss_fn in ways.items():
        gen = torch.Generator().manual_seed(0)
        img = F.normalize(torch.randn(n, dim, generator=gen), dim=1).to(device).requires_grad_()
        txt = F.normalize(torch.randn(n, dim, generator=gen), dim=1).to(device).requires_grad_()
        scale = torch.tensor(100.0, device=device, requires_grad=True)
        try:
            loss_fn(img[:256], txt[:256], scale).backward()  # kernels warm
            reset_memory(device)
            start = time.perf_counter()
            loss = loss_fn(img, txt, scale)
            loss.backward()
            sync(device)
            rows[name] = {
                "seconds": time.perf_counter() - start,
                "peak_gib": peak_memory(device),
                "loss": float(loss.detach()),
            }
        except torch.OutOfMemoryError as err:
            rows[name] = {"out_of_memory": str(err).splitlines()[0]}
        del img, txt, scale
        reset_memory(device)
        print(f"  loss {name}: {rows[name]}", flush=True)
    return rows


def fmt(value: float | None, digits: int = 1, unit: str = "") -> str:
    return "-" if value is None else f"{value:,.{digits}f}{unit}"


def ratio(ours: float | None, theirs: float | None) -> str:
    return "-" if not ours or not theirs else f"{ours / theirs:.2f}x"


def table(results: dict[str, Any]) -> list[str]:
    """The headline rows: | part | figure | vlcontrast | baseline | ratio |."""
    from gpu_parts import table_rows

    lines = ["| part | figure | vlcontrast | baseline | ratio |", "|---|---|---|---|---|"]
    step = results["parts"].get("step", {})
    for suffix in ("", " compiled"):
        ours, theirs = step.get(f"vlcontrast{suffix}"), step.get(f"openclip{suffix}")
        if not ours or not theirs:
            continue
        what = f"train step{suffix}, samples/s (vs OpenCLIP, same shape)"
        a, b = ours["samples_per_s"], theirs["samples_per_s"]
        lines.append(f"| step | {what} | {fmt(a)} | {fmt(b)} | {ratio(a, b)} |")
        mem = f"peak GiB{suffix} (lower is better)"
        lines.append(
            f"| step | {mem} | {fmt(ours['peak_gib'], 2)} | {fmt(theirs['peak_gib'], 2)} | "
            f"{ratio(ours['peak_gib'], theirs['peak_gib'])} |"
        )
        for kind in ("datasheet", "measured"):
            a, b = ours.get(f"mfu_{kind}"), theirs.get(f"mfu_{kind}")
            if a is not None and b is not None:
                what = f"MFU{suffix} vs {kind} bf16 peak"
                lines.append(f"| step | {what} | {a:.1%} | {b:.1%} | {ratio(a, b)} |")
    loss = results["parts"].get("loss", {})
    ours, theirs = loss.get("vlcontrast tiled"), loss.get("openclip ClipLoss")
    if ours and theirs:
        n = results["sizes"]["loss_batch"]
        if "out_of_memory" in theirs:
            lines.append(
                f"| loss | B={n}: seconds | {fmt(ours['seconds'], 3)} | out of memory | - |"
            )
        else:
            lines.append(
                f"| loss | B={n}: seconds | {fmt(ours['seconds'], 3)} | "
                f"{fmt(theirs['seconds'], 3)} | {ratio(ours['seconds'], theirs['seconds'])} |"
            )
            lines.append(
                f"| loss | B={n}: peak GiB | {fmt(ours['peak_gib'], 2)} | "
                f"{fmt(theirs['peak_gib'], 2)} | {ratio(ours['peak_gib'], theirs['peak_gib'])} |"
            )
    lines += table_rows(results)
    return lines


def main(argv: list[str] | None = None) -> int:
    import gpu_parts

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="gpu.json", help="where the JSON goes")
    parser.add_argument("--parts", default="step,loss,loader,index,fsdp")
    parser.add_argument("--smoke", action="store_true", help="toy sizes, on the CPU")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled steps")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    sizes = dict(SMOKE if args.smoke else FULL)
    sizes["compile"] = sizes["compile"] and not args.no_compile
    if args.smoke and sizes["compile"]:
        # The CPU smoke traces both compiled steps with dynamo (where graph breaks and ops it
        # cannot trace fail) but skips inductor's C++ build: that took 35 of the smoke's 54 s on
        # 2 cores, and a GPU runs inductor's Triton code instead, which a CPU build never tests.
        torch.compile = functools.partial(torch.compile, backend="eager")
    parts = {
        "step": part_step,
        "loss": part_loss,
        "loader": gpu_parts.part_loader,
        "index": gpu_parts.part_index,
        "fsdp": gpu_parts.part_fsdp,
    }
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    results: dict[str, Any] = {
        "date": date.today().isoformat(),
        "device": name,
        "torch": torch.__version__,
        "cpu_cores": gpu_parts.cores(),
        "sizes": sizes,
        "parts": {},
        "errors": {},
    }
    print(f"{name}, torch {torch.__version__}, {results['cpu_cores']} CPU cores", flush=True)
    started = time.perf_counter()
    for part in args.parts.split(","):
        if part not in parts:
            parser.error(f"--parts: {part!r} is not one of {', '.join(parts)}")
        print(f"{part} ...", flush=True)
        start = time.perf_counter()
        try:
            results["parts"][part] = parts[part](sizes, device)
        except Exception as err:  # one part's failure must not hide the others' figures
            results["errors"][part] = f"{type(err).__name__}: {err}"
            traceback.print_exc()
        print(f"{part}: {time.perf_counter() - start:.0f} s", flush=True)
    results["seconds"] = time.perf_counter() - started
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(f"\n{name}, {results['date']}, {results['seconds']:.0f} s in all; JSON: {args.out}")
    print("\n".join(table(results)))
    for part, error in results["errors"].items():
        print(f"FAILED {part}: {error}")
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
