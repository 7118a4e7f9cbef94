"""The data, index and FSDP parts of ``benchmarks/gpu.py`` (see its docstring), each against a
baseline timed in the same run."""

from __future__ import annotations

import random
import socket
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

WORDS = "a the photo of dog cat red blue small large on in with near tree house car".split()
SHARDS = 16  # enough units for every index-build worker of a 16-core machine


def cores() -> int:
    from vlcontrast.train.fit import cores_per_rank

    return cores_per_rank()


def write_jpeg_shards(out: Path, sizes: dict) -> str:
    """``sizes['images']`` photo-like JPEGs with captions in SHARDS shards; their pattern."""
    from loader import photo_like

    from vlcontrast.data.shard_writer import write_shards

    width, height = sizes["jpeg"]
    rng, words = np.random.default_rng(0), random.Random(0)

    def samples():
        for i in range(sizes["images"]):
            text = " ".join(words.choices(WORDS, k=words.randint(8, 20)))
            yield {"__key__": f"{i:06d}", "jpg": photo_like(width, height, rng), "txt": text}

    write_shards(samples(), out, per_shard=max(1, sizes["images"] // SHARDS))
    last = len(list(out.glob("*.tar"))) - 1
    return str(out / f"{{00000..{last:05d}}}.tar")


def tokenizer_at(out: Path):
    from vlcontrast.config import TextTowerConfig
    from vlcontrast.data.vocab import train_tokenizer
    from vlcontrast.models.text_tower import load_tokenizer

    captions = [" ".join(random.Random(i).choices(WORDS, k=12)) for i in range(200)]
    train_tokenizer(captions, out, kind="wordlevel", lowercase=False)
    return load_tokenizer(TextTowerConfig(tokenizer=str(out)))


def part_loader(sizes: dict, device: torch.device) -> dict[str, Any]:
    """The trainer's loader against webdataset + PIL + torchvision, both with the default
    worker count of this machine (``train/fit.py``)."""
    from loader import baseline_loader, samples_per_s, vlcontrast_loader

    from vlcontrast.train.fit import auto_workers

    workers = auto_workers(device.type == "cuda")
    with tempfile.TemporaryDirectory() as tmp:
        pattern = write_jpeg_shards(Path(tmp) / "shards", sizes)
        tokenizer = tokenizer_at(Path(tmp) / "tok")
        rows: dict[str, Any] = {"workers": workers}
        for name, build in (("vlcontrast", vlcontrast_loader), ("baseline", baseline_loader)):
            rate, cpu_ms = samples_per_s(build(pattern, tokenizer, workers, (0.9, 1.0)))
            rows[name] = {
                "samples_per_s": rate,
                "per_worker": rate / max(1, workers),
                "cpu_ms_per_sample": cpu_ms,
            }
            print(f"  loader {name}: {rate:.0f} samples/s with {workers} workers", flush=True)
    return rows


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile_ms(fn, items, q: float = 50) -> float:
    times = []
    for item in items:
        start = time.perf_counter()
        fn(item)
        times.append(time.perf_counter() - start)
    return 1000 * float(np.percentile(times, q))


def part_index(sizes: dict, device: torch.device) -> dict[str, Any]:
    """``index build`` images/s against the image tower alone, and text-query latency over
    ``sizes['vectors']`` stored vectors: exact on the device against faiss flat."""
    from gpu import timed
    from search import make_index

    from vlcontrast import config as config_lib
    from vlcontrast.models.build import build_model
    from vlcontrast.models.load import save_model_dir
    from vlcontrast.search.backends import ExactBackend, FaissBackend, build_faiss
    from vlcontrast.search.build import BuildOptions, build_index
    from vlcontrast.search.layout import IndexFiles
    from vlcontrast.search.units import SourceSpec
    from vlcontrast.train.fit import auto_workers

    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pattern = write_jpeg_shards(tmp / "shards", sizes)
        tokenizer = tokenizer_at(tmp / "tok")
        cfg = config_lib.load(
            None, [f"model.preset={sizes['preset']}", f"text.tokenizer={tmp}/tok"]
        )
        config_lib.resolve(cfg)
        torch.manual_seed(0)
        model = build_model(cfg)
        checkpoint = save_model_dir(model, tokenizer, cfg, tmp / "model")
        batch = 256 if device.type == "cuda" else 16
        options = BuildOptions(
            batch_size=batch,
            num_workers=auto_workers(device.type == "cuda"),
            progress=False,
            overwrite=True,
            device=device,
        )
        built = build_index(tmp / "index", [SourceSpec(pattern)], checkpoint, options)
        model = model.to(device).eval()
        size = cfg.image.image_size
        images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device)
        with torch.no_grad():
            forward_s = timed(
                lambda: model(images=images), device, sizes["seconds"], sizes["repeats"]
            )
        rows["build"] = {
            "images_per_s": built["images_per_s"],
            "tower_images_per_s": batch / forward_s,
            "rows": built["rows"],
        }
        print(f"  index build: {built['images_per_s']:.0f} images/s", flush=True)

        queries = make_index(
            tmp / "vectors", sizes["vectors"], sizes["vector_dim"], sizes["queries"]
        )
        files = IndexFiles.open(tmp / "vectors")
        exact = ExactBackend(files, device=device, cache_bytes=4 << 30)
        exact.search(queries[:1], 10)  # the first query fills the block cache
        build_faiss(files, "flat")
        flat = FaissBackend.load(files)
        texts = [f"a photo of a {w}" for w in WORDS][: sizes["queries"]]
        with torch.no_grad():
            encode_ms = percentile_ms(lambda t: encode_text(model, tokenizer, t, device), texts)
        rows["query"] = {
            "vectors": len(files),
            "encode_ms": encode_ms,
            "exact_ms": percentile_ms(lambda q: exact.search(q[None], 10), queries),
            "faiss_flat_ms": percentile_ms(lambda q: flat.search(q[None], 10), queries),
            "exact_device": str(device),
        }
        print(f"  index query: {rows['query']}", flush=True)
    return rows


def encode_text(model, tokenizer, text: str, device: torch.device) -> np.ndarray:
    tokens = tokenizer([text], return_tensors="pt", padding=True)
    out = model(
        input_ids=tokens["input_ids"].to(device),
        attention_mask=tokens["attention_mask"].to(device),
    )
    return out["txt_emb"].float().cpu().numpy()


def part_fsdp(sizes: dict, device: torch.device) -> dict[str, Any]:
    """A one-device FSDP2 step against the unsharded one, and a checkpoint of the sharded model
    saved and restored both ways (sharded files, single files), every tensor compared."""
    import torch.distributed as dist
    from gpu import our_step, timed

    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(
        backend, init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1
    )
    try:
        rows: dict[str, Any] = {}
        for name, sharded in (("plain", False), ("fsdp", True)):
            step, batch = our_step(sizes, device, compiled=False, sharded=sharded)
            rows[name] = {
                "samples_per_s": batch / timed(step, device, sizes["seconds"], sizes["repeats"])
            }
            print(f"  fsdp step {name}: {rows[name]['samples_per_s']:.1f} samples/s", flush=True)
        for way in ("full", "sharded"):
            rows[f"checkpoint {way}"] = checkpoint_round_trip(sizes, device, way == "sharded")
            print(f"  checkpoint {way}: {rows[f'checkpoint {way}']}", flush=True)
        return rows
    finally:
        dist.destroy_process_group()


def checkpoint_round_trip(sizes: dict, device: torch.device, sharded: bool) -> dict[str, Any]:
    from vlcontrast import config as config_lib
    from vlcontrast.models.build import build_model
    from vlcontrast.train import checkpoint, fsdp
    from vlcontrast.train.resume import save_checkpoint

    cfg = config_lib.resolve(config_lib.load(None, [f"model.preset={sizes['preset']}"]))
    cfg.train.sharded_checkpoints = sharded

    def sharded_model():
        torch.manual_seed(0)
        model = fsdp.shard(build_model(cfg), device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        for param in model.parameters():  # one step: Adam holds both moments of every weight
            param.grad = torch.ones_like(param)
        optimizer.step()
        optimizer.zero_grad()
        return model, {"optimizer": fsdp.ShardedOptimizer(model, optimizer)}

    accelerator = SimpleNamespace(wait_for_everyone=lambda: None, is_main_process=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "checkpoints"
        model, parts = sharded_model()
        start = time.perf_counter()
        save_checkpoint(accelerator, root, model, parts, 1, cfg, None)
        save_s = time.perf_counter() - start
        saved = checkpoint.latest(root)
        size = sum(p.stat().st_size for p in saved.rglob("*") if p.is_file())
        fresh, fresh_parts = sharded_model()
        with torch.no_grad():
            for param in fresh.parameters():
                param.zero_()
        start = time.perf_counter()
        checkpoint.restore(saved, fresh, fresh_parts)
        restore_s = time.perf_counter() - start
        equal = all(
            torch.equal(whole(a), whole(b))
            for a, b in zip(model.parameters(), fresh.parameters(), strict=True)
        )
    if not equal:
        raise AssertionError("the restored weights differ from the saved ones")
    return {"save_s": save_s, "restore_s": restore_s, "bytes": size, "equal": equal}


def whole(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def table_rows(results: dict[str, Any]) -> list[str]:
    from gpu import fmt, ratio

    parts, lines = results["parts"], []
    loader = parts.get("loader")
    if loader:
        a, b = loader["vlcontrast"]["samples_per_s"], loader["baseline"]["samples_per_s"]
        what = f"samples/s, {loader['workers']} workers (vs webdataset + PIL)"
        lines.append(f"| loader | {what} | {fmt(a)} | {fmt(b)} | {ratio(a, b)} |")
        a, b = loader["vlcontrast"]["per_worker"], loader["baseline"]["per_worker"]
        lines.append(f"| loader | samples/s per worker | {fmt(a)} | {fmt(b)} | {ratio(a, b)} |")
    index = parts.get("index")
    if index:
        a, b = index["build"]["images_per_s"], index["build"]["tower_images_per_s"]
        what = "index build images/s (vs the image tower on batches in memory)"
        lines.append(f"| index | {what} | {fmt(a)} | {fmt(b)} | {ratio(a, b)} |")
        q = index["query"]
        exact, flat = q["encode_ms"] + q["exact_ms"], q["encode_ms"] + q["faiss_flat_ms"]
        what = f"text query p50 ms over {q['vectors']:,} vectors (vs faiss flat, CPU)"
        lines.append(
            f"| index | {what} | {fmt(exact, 2)} | {fmt(flat, 2)} | {ratio(exact, flat)} |"
        )
    fsdp = parts.get("fsdp")
    if fsdp:
        a, b = fsdp["fsdp"]["samples_per_s"], fsdp["plain"]["samples_per_s"]
        what = "one-GPU FSDP2 step samples/s (vs unsharded)"
        lines.append(f"| fsdp | {what} | {fmt(a)} | {fmt(b)} | {ratio(a, b)} |")
        for phase in ("save", "restore"):
            a, b = fsdp["checkpoint sharded"][f"{phase}_s"], fsdp["checkpoint full"][f"{phase}_s"]
            what = f"checkpoint {phase} s, sharded (vs single files)"
            lines.append(f"| fsdp | {what} | {fmt(a, 2)} | {fmt(b, 2)} | {ratio(a, b)} |")
    return lines
