#!/usr/bin/env python
"""Do the defaults learn as well as OpenCLIP? vlcontrast with a run that sets only its data,
``model.preset=tiny`` and ``train.epochs``, against OpenCLIP's tiny32 trained by OpenCLIP's own
script (``open_clip_train.main``) with its recommended settings, at equal epochs, in one run.

    python benchmarks/learning.py [--corpus digits shapes] [--epochs 30] [--seed 0]   # ~10 min

Corpora that need no download, each written once and read by both trainers:

* ``digits``: the 8x8 handwritten digits inside scikit-learn (1797 images) upscaled to 32 px,
  20% of each class held out; each image has one caption from five templates ("a handwritten
  seven"); zero-shot over "zero" ... "nine" with two templates (chance 0.100).
* ``shapes``: the demo's coloured shapes drawn at 32 px (2000 training, 600 held-out from
  another seed); captions name colour and shape, and at random size and position; zero-shot over
  the 30 colour x shape classes (chance 0.033).

vlcontrast: its default batch, optimizer, schedule, warm-up, precision and workers; a BPE
tokenizer trained on the training captions with ``vlcontrast tokenizer train``'s defaults.

OpenCLIP (``open_clip_train.main``): tiny32 = ViT 4 x 128, patch 4 at 32 px, 4 heads; text
transformer 4 x 128, 4 heads, context 32, its own 49408-token CLIP tokenizer; its defaults for a
ViT (AdamW lr 5e-4, betas 0.9/0.98, eps 1e-6, weight decay 0.2, cosine schedule, no gradient
clipping, its RandomResizedCrop(0.9, 1.0) training transform) with the same batch; two settings
changed because its defaults cannot run here: ``--precision fp32`` (its default ``amp`` emulates
bf16 on a CPU, 10x slower) and ``--warmup`` 10% of the run (its default 10000 steps would never
end). Data from a CSV of PNG files, ``--workers`` as many as cores. Its zero-shot top-1 is
computed here with its model, tokenizer and validation transform, with the same templates.

Prints, per corpus, both zero-shot top-1 figures and wall times (training, data loading included,
evaluation excluded for both) and their ratios.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
DIGIT_CAPTIONS = [
    "a photo of the number {}",
    "a handwritten {}",
    "the digit {} written by hand",
    "a scan of a handwritten number {}",
    "{}",
]
DIGIT_TEMPLATES = ["a photo of the number {}", "a handwritten {}"]
TINY32 = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 32, "layers": 4, "width": 128, "patch_size": 4, "head_width": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 4},
}


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def digits(seed: int) -> tuple[list, list, list[str], list[str]]:
    """(train, held-out) as (png bytes, caption, class) rows, class names, templates."""
    from sklearn.datasets import load_digits

    data = load_digits()
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(data.target):
        by_class.setdefault(int(label), []).append(index)
    heldout = set()
    for indices in by_class.values():
        heldout.update(rng.sample(indices, len(indices) // 5))

    def row(index: int) -> tuple[bytes, str, int]:
        pixels = (data.images[index] * (255 / 16)).astype(np.uint8)
        image = Image.fromarray(pixels, "L").resize((32, 32), Image.BICUBIC).convert("RGB")
        label = int(data.target[index])
        return png(image), rng.choice(DIGIT_CAPTIONS).format(WORDS[label]), label

    order = list(range(len(data.target)))
    rng.shuffle(order)
    train = [row(i) for i in order if i not in heldout]
    held = [row(i) for i in sorted(heldout)]
    return train, held, WORDS, DIGIT_TEMPLATES


def shapes(seed: int) -> tuple[list, list, list[str], list[str]]:
    from vlcontrast.data import synthetic

    def rows(n: int, seed: int) -> list[tuple[bytes, str, int]]:
        out = []
        for sample in synthetic.samples(n, seed, side=32):
            image = Image.open(io.BytesIO(sample["jpg"])).convert("RGB")
            out.append((png(image), sample["txt"], int(sample["cls"])))
        return out

    return rows(2000, seed), rows(600, seed + 1), synthetic.CLASSNAMES, synthetic.TEMPLATES


CORPORA = {"digits": digits, "shapes": shapes}


def write_corpus(rows_train, rows_held, classnames, templates, out: Path) -> dict[str, str]:
    """Shards and a tokenizer for vlcontrast, PNG files and a CSV for OpenCLIP."""
    from vlcontrast.data.shard_writer import write_shards
    from vlcontrast.data.vocab import train_tokenizer

    def shard_rows(rows, prefix):
        for i, (data, text, label) in enumerate(rows):
            yield {"__key__": f"{prefix}{i:06d}", "png": data, "txt": text, "cls": str(label)}

    train_sizes = write_shards(shard_rows(rows_train, "t"), out / "train", per_shard=500)
    write_shards(shard_rows(rows_held, "h"), out / "heldout", per_shard=len(rows_held))
    classes = {"classnames": classnames, "templates": templates}
    (out / "heldout" / "classes.json").write_text(json.dumps(classes))
    train_tokenizer([text for _, text, _ in rows_train], out / "tokenizer")
    (out / "png").mkdir()
    with open(out / "train.csv", "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(["filepath", "title"])
        for i, (data, text, _) in enumerate(rows_train):
            path = out / "png" / f"{i:06d}.png"
            path.write_bytes(data)
            writer.writerow([str(path), text])
    return {
        "train": str(out / "train" / f"{{00000..{len(train_sizes) - 1:05d}}}.tar"),
        "heldout": str(out / "heldout" / "00000.tar"),
        "tokenizer": str(out / "tokenizer"),
        "csv": str(out / "train.csv"),
    }


def run_vlcontrast(
    files: dict[str, str], out: Path, epochs: float, seed: int, extra: tuple[str, ...] = ()
) -> dict:
    """Only data, the preset and the length (what a newcomer's run file holds)."""
    from vlcontrast import config as config_lib
    from vlcontrast.eval.runner import run_evaluators, scalar_metrics
    from vlcontrast.models.load import load_model
    from vlcontrast.train.loop import train

    run = [
        f"data.train_shards={files['train']}",
        f"text.tokenizer={files['tokenizer']}",
        "model.preset=tiny",
        f"train.epochs={epochs}",
        f"train.seed={seed}",
        f"train.output_dir={out}",
        "train.progress=false",
        *extra,
    ]
    start = time.perf_counter()
    summary = train(config_lib.load(None, run))
    seconds = time.perf_counter() - start
    model, tokenizer, _ = load_model(summary["checkpoint"])
    evaluator = f"eval.evaluators=[{{kind: zeroshot, data: '{files['heldout']}'}}]"
    cfg = config_lib.resolve(config_lib.load(None, [*run, evaluator]))
    top1 = scalar_metrics(run_evaluators(model, tokenizer, cfg))["zeroshot/top1"]
    return {"top1": top1, "seconds": seconds, "steps": summary["steps"]}


def run_openclip(
    files, rows_held, classnames, templates, out: Path, epochs: int, seed: int, batch: int
) -> dict:
    import open_clip
    from open_clip_train import main as open_clip_main

    config_dir = out / "model_configs"
    config_dir.mkdir(parents=True)
    (config_dir / "tiny32.json").write_text(json.dumps(TINY32))
    open_clip.add_model_config(str(config_dir))
    n = sum(1 for _ in open(files["csv"])) - 1
    steps = (n // batch) * epochs  # its CSV loader drops the last partial batch
    args = [
        "--model",
        "tiny32",
        "--train-data",
        files["csv"],
        "--dataset-type",
        "csv",
        "--csv-separator",
        "\t",
        "--batch-size",
        str(batch),
        "--epochs",
        str(epochs),
        "--warmup",
        str(max(1, steps // 10)),
        "--precision",
        "fp32",
        "--workers",
        str(os.cpu_count() or 1),
        "--seed",
        str(seed),
        "--logs",
        str(out),
        "--name",
        "openclip",
        "--save-frequency",
        str(epochs),
        "--report-to",
        "",
        "--log-every-n-steps",
        "1000",
    ]
    start = time.perf_counter()
    open_clip_main.main(args)
    seconds = time.perf_counter() - start
    model, _, preprocess = open_clip.create_model_and_transforms("tiny32")
    state = torch.load(
        out / "openclip" / "checkpoints" / f"epoch_{epochs}.pt",
        map_location="cpu",
        weights_only=True,
    )["state_dict"]
    model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    model.eval()
    tokenizer = open_clip.get_tokenizer("tiny32")
    with torch.no_grad():
        classes = []
        for name in classnames:
            emb = model.encode_text(tokenizer([t.format(name) for t in templates]), normalize=True)
            classes.append(torch.nn.functional.normalize(emb.mean(0), dim=-1))
        classes = torch.stack(classes)
        images = torch.stack(
            [preprocess(Image.open(io.BytesIO(d)).convert("RGB")) for d, _, _ in rows_held]
        )
        predicted = (model.encode_image(images, normalize=True) @ classes.T).argmax(1)
    labels = torch.tensor([label for _, _, label in rows_held])
    return {"top1": float((predicted == labels).float().mean()), "seconds": seconds, "steps": steps}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", nargs="+", default=list(CORPORA), choices=list(CORPORA))
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=0, help="training images (0: all; smoke)")
    args = parser.parse_args(argv)
    from vlcontrast.config import Config

    batch = Config().data.batch_size  # the default batch, given to OpenCLIP too
    table = []
    for name in args.corpus:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            rows_train, rows_held, classnames, templates = CORPORA[name](args.seed)
            rows_train = rows_train[: args.limit] if args.limit else rows_train
            files = write_corpus(rows_train, rows_held, classnames, templates, tmp / "data")
            ours = run_vlcontrast(files, tmp / "vlcontrast", args.epochs, args.seed)
            theirs = run_openclip(
                files, rows_held, classnames, templates, tmp / "oc", args.epochs, args.seed, batch
            )
        table.append((name, len(rows_train), len(rows_held), len(classnames), ours, theirs))
    print(f"\n{args.epochs} epochs, batch {batch}, seed {args.seed}; 2 trainers, same data")
    print(
        f"{'corpus':>8} | {'train':>5} | {'held':>4} | {'vlcontrast top-1':>16} | "
        f"{'OpenCLIP top-1':>14} | ratio | {'vlc s':>6} | {'OC s':>6} | time ratio"
    )
    for name, n_train, n_held, n_classes, ours, theirs in table:
        print(
            f"{name:>8} | {n_train:5d} | {n_held:4d} | {ours['top1']:16.3f} | "
            f"{theirs['top1']:14.3f} | {ours['top1'] / max(theirs['top1'], 1e-9):5.2f} | "
            f"{ours['seconds']:6.0f} | {theirs['seconds']:6.0f} | "
            f"{ours['seconds'] / theirs['seconds']:.2f}x"
        )
        print(
            f"{'':>8}   steps: vlcontrast {ours['steps']}, OpenCLIP {theirs['steps']}; "
            f"chance {1 / n_classes:.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
