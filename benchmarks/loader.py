"""Data-loading throughput: the vlcontrast pipeline against a plain webdataset + PIL baseline.

Both read the same shards, written here: photo-like JPEGs of 384x256 and of 1600x1067 with
10-25-word captions. Each pipeline decodes to RGB, takes a bicubic random-resized crop to 224 and
tokenises the captions, and is timed for 0, 1 and 2 dataloader workers in the same run:

* baseline: ``wds.WebDataset(urls).decode("pilrgb")`` + torchvision
  ``RandomResizedCrop(224, bicubic) -> ToTensor -> Normalize`` + one tokenizer call per caption +
  the DataLoader's default collate.
* vlcontrast: ``ShardDataset`` as the trainer builds it (``CropResize``: DCT-scaled JPEG decode
  when the crop is at least 2x the output, torch's uint8 bicubic antialiased resize, uint8 batches
  normalised later on the device; one tokenizer call per batch).

The last column is vlcontrast's samples/s per CPU core (1000 / its CPU ms per sample): how many
cores one GPU's rate needs (``data.num_workers=-1`` gives a GPU run every core but one).

Quality check: for the same crop box (vlcontrast's box snapped to the reduced decode's grid),
vlcontrast's crop is compared with the baseline's full decode + PIL bicubic resize; the PSNR must
be at least 35 dB, so a cheaper, worse resize cannot count as a win.

    python benchmarks/loader.py            # both image sizes, scale (0.9, 1.0) as OpenCLIP trains
    python benchmarks/loader.py --scale 0.08 1.0   # torchvision's default crop scale
    python benchmarks/loader.py --views simclr     # two augmented views per image (SSL)
    python benchmarks/loader.py --multicrop swav   # SwAV's 2x224 + 6x96 crops (DINO: dino)

``--views PRESET`` times the image-only objectives' loaders instead, captions unread: the
baseline decodes with PIL and runs a lightly/solo-learn style torchvision ``Compose`` twice per
image (RandomResizedCrop, flip, ColorJitter, grayscale, GaussianBlur, solarize, ToTensor,
Normalize, with the preset's parameters); vlcontrast decodes once and cuts both views from it
(``data.transforms.MultiView`` + ``data.augment``), uint8 until the device.
``--multicrop swav|dino`` does the same for the multi-crop methods' default crops (2 global at
224 and 6 or 8 local at 96, each with its paper's augmentation): the baseline is lightly's
``MultiCropTranform``, one torchvision pipeline per crop after one PIL decode.
"""

from __future__ import annotations

import argparse
import io
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms as T

from vlcontrast.config import TextTowerConfig
from vlcontrast.data.batching import Collate, make_loader
from vlcontrast.data.decode import Decoder
from vlcontrast.data.image import CropResize, snap
from vlcontrast.data.shard_writer import write_shards
from vlcontrast.data.shards import DataPosition, ShardDataset
from vlcontrast.data.sources import parse_sources
from vlcontrast.data.vocab import train_tokenizer
from vlcontrast.models.text_tower import load_tokenizer

SIZE, CONTEXT, BATCH = 224, 77, 32
MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
WORDS = "a the photo of dog cat red blue small large on in with near tree house car beach".split()


def photo_like(width: int, height: int, rng: np.random.Generator) -> bytes:
    """Smooth colour fields, shapes and mild noise, saved at quality 90: compresses like a
    photo (a pure-noise image would make every decoder look equally slow)."""
    small = rng.integers(0, 255, (height // 32 + 2, width // 32 + 2, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(small).resize((width, height), Image.BICUBIC), dtype=np.int16)
    noise = rng.integers(-6, 7, (height, width, 3), dtype=np.int16)
    buffer = io.BytesIO()
    Image.fromarray((base + noise).clip(0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def write_set(out: Path, width: int, height: int, n: int) -> str:
    rng, words = np.random.default_rng(width), random.Random(width)

    def samples():
        for i in range(n):
            text = " ".join(words.choices(WORDS, k=words.randint(10, 25)))
            yield {"__key__": f"{i:06d}", "jpg": photo_like(width, height, rng), "txt": text}

    write_shards(samples(), out, per_shard=n // 8)
    return str(out / "{00000..00007}.tar")


def baseline_loader(pattern: str, tokenizer, workers: int, scale) -> DataLoader:
    transform = T.Compose(
        [
            T.RandomResizedCrop(SIZE, scale=scale, interpolation=T.InterpolationMode.BICUBIC),
            T.ToTensor(),
            T.Normalize(MEAN, STD),
        ]
    )

    def tokenize(text: str) -> torch.Tensor:
        ids = tokenizer(text, padding="max_length", truncation=True, max_length=CONTEXT)
        return torch.tensor(ids["input_ids"])

    dataset = (
        wds.WebDataset(pattern, shardshuffle=False, nodesplitter=None, empty_check=False)
        .decode("pilrgb")
        .to_tuple("jpg", "txt")
        .map_tuple(transform, tokenize)
    )
    return DataLoader(dataset, batch_size=BATCH, num_workers=workers)


def view_compose(view, size: int = SIZE) -> T.Compose:
    """One view as lightly's and solo-learn's torchvision pipelines build it."""
    side = max(3, int(view.blur_kernel * size) // 2 * 2 + 1)
    b, c, s, h = view.jitter
    return T.Compose(
        [
            T.RandomResizedCrop(
                size, scale=tuple(view.scale), interpolation=T.InterpolationMode.BICUBIC
            ),
            T.RandomHorizontalFlip(view.flip),
            T.RandomApply([T.ColorJitter(b, c, s, h)], p=view.jitter_p),
            T.RandomGrayscale(view.grayscale),
            T.RandomApply([T.GaussianBlur(side, tuple(view.blur_sigma))], p=view.blur),
            T.RandomSolarize(128, p=view.solarize),
            T.ToTensor(),
            T.Normalize(MEAN, STD),
        ]
    )


def view_plan(views: str, multicrop: str) -> tuple[list, list]:
    """The crops to cut, as (size, ViewConfig) each, and their groups ((name, count); []: one
    tensor): a two-view preset's, or a multi-crop method's defaults (``swav``: 2 x 224 + 6 x
    96; ``dino``: 2 x 224 + 8 x 96)."""
    from vlcontrast.data.augment import PRESETS, ViewConfig

    if not multicrop:
        return [(SIZE, ViewConfig(**spec)) for spec in PRESETS[views]], []
    from vlcontrast.data.view_presets import multicrop_groups
    from vlcontrast.objective_settings import DINOConfig, SwAVConfig

    crops = {"swav": SwAVConfig().crops, "dino": DINOConfig().crops}[multicrop]
    groups = multicrop_groups(crops, multicrop, SIZE, "crops")
    plan = [(g.size, v) for g in groups for v in g.settings()]
    return plan, [(g.name, g.count) for g in groups]


def baseline_views_loader(pattern: str, plan: list, groups: list, workers: int) -> DataLoader:
    """lightly's ``MultiViewTransform`` / ``MultiCropTranform``: PIL decode, then one
    torchvision pipeline per view."""
    composes = [view_compose(view, size) for size, view in plan]
    dataset = (
        wds.WebDataset(pattern, shardshuffle=False, nodesplitter=None, empty_check=False)
        .decode("pilrgb")
        .to_tuple("jpg")
        .map(lambda sample: [compose(sample[0]) for compose in composes])
    )
    return DataLoader(dataset, batch_size=BATCH, num_workers=workers)


def vlcontrast_views_loader(pattern: str, plan: list, groups: list, workers: int) -> DataLoader:
    from vlcontrast.data.augment import Augment
    from vlcontrast.data.transforms import MultiView

    crops = [CropResize(size, "random_resized", tuple(v.scale)) for size, v in plan]
    transform = MultiView(crops, [Augment(v) for _, v in plan], groups)
    decoder = Decoder(transform, caption_key="")
    dataset = ShardDataset(parse_sources(pattern), decoder, Collate(), BATCH, shuffle_buffer=1)
    dataset.position = DataPosition()
    dataset.position.reset(max(1, workers))
    return make_loader(dataset, workers)


def train_and_save(captions: list[str], out: Path) -> Path:
    train_tokenizer(captions, out, kind="wordlevel", lowercase=False)
    return out


def vlcontrast_loader(pattern: str, tokenizer, workers: int, scale) -> DataLoader:
    decoder = Decoder(CropResize(SIZE, "random_resized", tuple(scale)))
    dataset = ShardDataset(
        parse_sources(pattern), decoder, Collate(tokenizer, CONTEXT), BATCH, shuffle_buffer=1
    )
    dataset.position = DataPosition()
    dataset.position.reset(max(1, workers))
    return make_loader(dataset, workers)


def best_samples_per_s(builds: list, args: tuple, repeats: int) -> list[tuple[float, float]]:
    """For each loader builder, the best of ``repeats`` runs (on a shared machine, slower runs
    measure the neighbours): (samples/s, CPU ms per sample). The builders take turns, run by
    run, so a slow spell of the machine falls on both pipelines rather than on one."""
    runs = [[samples_per_s(build(*args)) for build in builds] for _ in range(repeats)]
    per_build = zip(*runs, strict=True)
    return [(max(r for r, _ in each), min(c for _, c in each)) for each in per_build]


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the dataloader workers)."""
    me, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def samples_per_s(loader: DataLoader) -> tuple[float, float]:
    """Steady-state throughput: the clock starts once every worker has delivered its first
    batch, so process start-up (fork, first touches of memory), which a training run pays once
    per epoch, is left out for both pipelines alike. Also the CPU milliseconds per sample of all
    processes over the whole run (start-up included): a figure that CPU time taken by other
    tenants of the machine does not move."""
    warmup, n, total = max(1, loader.num_workers), 0, 0
    cpu = cpu_seconds()
    for index, batch in enumerate(b for b in loader if not (isinstance(b, dict) and "pad" in b)):
        # vlcontrast's items hold the batch beside the loader's control fields
        size = len(batch["batch"]["keys"]) if isinstance(batch, dict) else len(batch[0])
        total += size
        if index == warmup - 1:
            start = time.perf_counter()
        elif index >= warmup:
            n += size
    if n == 0:
        raise SystemExit(
            f"only {index + 1} batch(es) of {BATCH} with {loader.num_workers} workers: too few "
            "to time past the first batch of each worker; raise --small/--large"
        )
    rate = n / (time.perf_counter() - start)
    return rate, 1000 * (cpu_seconds() - cpu) / total


def bits_per_pixel(pattern: str) -> float:
    bits = pixels = 0
    for url in wds.shardlists.expand_urls(pattern):
        for raw in wds.tarfile_samples([{"url": url}]):
            with Image.open(io.BytesIO(raw["jpg"])) as img:
                bits, pixels = bits + 8 * len(raw["jpg"]), pixels + img.width * img.height
    return bits / pixels


def crop_psnr(pattern: str, scale, n: int = 24) -> tuple[float, float]:
    """(min, mean) PSNR of vlcontrast's crops against full decode + PIL bicubic, same box."""
    transform = CropResize(SIZE, "random_resized", tuple(scale))
    values = []
    raws = (
        raw
        for url in wds.shardlists.expand_urls(pattern)
        for raw in wds.tarfile_samples([{"url": url}])
    )
    for index, raw in zip(range(n), raws, strict=False):
        with Image.open(io.BytesIO(raw["jpg"])) as img:
            box = transform.box(*img.size, random.Random(index))
            reduction = transform.reduction(img, box)
            ours = transform.resize(*transform.decode(img, box)).double()
        left, top, w, h = snap(box, reduction) if reduction > 1 else box
        full = Image.open(io.BytesIO(raw["jpg"])).convert("RGB")
        ref = T.functional.resized_crop(
            full, top, left, h, w, [SIZE, SIZE], T.InterpolationMode.BICUBIC
        )
        ref = torch.from_numpy(np.asarray(ref, dtype=np.float64)).permute(2, 0, 1)
        mse = (ours - ref).pow(2).mean().item()
        values.append(10 * np.log10(255**2 / max(mse, 1e-12)))
    return min(values), sum(values) / len(values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, nargs=2, default=[0.9, 1.0])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--small", type=int, default=1536, help="384x256 samples (0: skip)")
    parser.add_argument("--large", type=int, default=384, help="1600x1067 samples (0: skip)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure, best kept")
    parser.add_argument("--views", default="", help="a view preset: time two-view loaders")
    parser.add_argument(
        "--multicrop", default="", choices=["", "swav", "dino"], help="time multi-crop loaders"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sizes = {"384x256": (384, 256, args.small), "1600x1067": (1600, 1067, args.large)}
        sets = {
            name: write_set(tmp / name, width, height, n)
            for name, (width, height, n) in sizes.items()
            if n > 0
        }
        captions = [" ".join(random.Random(i).choices(WORDS, k=12)) for i in range(200)]
        tokenizer = load_tokenizer(
            TextTowerConfig(tokenizer=str(train_and_save(captions, tmp / "tok")))
        )
        what = (
            f"two views, preset {args.views}" if args.views else f"crop scale {tuple(args.scale)}"
        )
        if args.multicrop:
            plan, groups = view_plan("", args.multicrop)
            counts = f"{groups[0][1]}x{plan[0][0]} + {groups[-1][1]}x{plan[-1][0]}"
            what = f"multi-crop {args.multicrop}: {counts} crops per image"
        print(f"{what}, batch {BATCH}, torch threads 1 per process, best of {args.repeats} runs")
        for name, pattern in sets.items():
            print(f"{name}: {bits_per_pixel(pattern):.2f} bits per pixel (JPEG quality 90)")
        print(
            f"{'images':>10} {'workers':>7} {'baseline/s':>11} {'vlcontrast/s':>13} {'ratio':>6}"
            f" {'CPU ms/sample: baseline':>24} {'vlcontrast':>10} {'ratio':>6}"
            f" {'vlcontrast/s per core':>22}"
        )
        ok = True
        for name, pattern in sets.items():
            for workers in args.workers:
                setting = (pattern, tokenizer, workers, args.scale)
                builders = [baseline_loader, vlcontrast_loader]
                if args.views or args.multicrop:
                    setting = (pattern, *view_plan(args.views, args.multicrop), workers)
                    builders = [baseline_views_loader, vlcontrast_views_loader]
                (base, base_cpu), (ours, ours_cpu) = best_samples_per_s(
                    builders, setting, args.repeats
                )
                print(
                    f"{name:>10} {workers:>7} {base:>11.1f} {ours:>13.1f} {ours / base:>5.2f}x"
                    f" {base_cpu:>24.2f} {ours_cpu:>10.2f} {base_cpu / ours_cpu:>5.2f}x"
                    f" {1000 / ours_cpu:>22.1f}"
                )
            low, mean = crop_psnr(pattern, args.scale)
            ok &= low >= 35
            print(f"{name:>10} crop PSNR vs baseline, same box: min {low:.1f}, mean {mean:.1f} dB")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
