#!/usr/bin/env python
"""Does the default recipe learn? Zero-shot top-1 of the default recipe against the previous
defaults, same image tower, same data, epochs, batch and learning rate, in one run.

    python benchmarks/learning.py [--epochs 30] [--batch 128] [--lr 1e-3] [--seed 0]   # ~8 min

Data that needs no download: the 8x8 handwritten digits that ship inside scikit-learn (1797
images), upscaled to 32 px and written as shards with captions drawn from a few templates
("a photo of the number seven", ...). 20% of each class is held out; both recipes are scored by
zero-shot classification on it with the class names "zero" ... "nine" and two templates.

* default: ``model.preset=tiny`` (a 4-layer CLIP-layout ViT at 32 px and CLIP's causal text
  transformer, 4 layers, eos pooling), random-resized crop (0.9, 1.0), OpenAI mean/std.
* previous defaults: the same image tower; an inline BERT text tower of the same width and depth
  with ``cls`` pooling, and the centre crop (the defaults before the recipe issue).

Both use the same byte-level BPE tokenizer trained on the captions. Prints top-1 and wall time
for each, and the ratio of the top-1s.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from vlcontrast import config as config_lib
from vlcontrast.data.shard_writer import write_shards
from vlcontrast.data.vocab import train_tokenizer
from vlcontrast.train.loop import train

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
CAPTIONS = [
    "a photo of the number {}",
    "a handwritten {}",
    "the digit {} written by hand",
    "a scan of a handwritten number {}",
    "{}",
]
EVAL_TEMPLATES = ["a photo of the number {}", "a handwritten {}"]

PREVIOUS = [
    "text.config={model_type: bert, hidden_size: 128, num_hidden_layers: 4, "
    "num_attention_heads: 4, intermediate_size: 512, max_position_embeddings: 32}",
    "text.pooling=cls",
    "data.crop=center",
]


def write_digits(out: Path, seed: int) -> dict[str, str]:
    """Train and held-out shards (20% of each class, chosen by ``seed``) and their captions."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(digits.target):
        by_class.setdefault(int(label), []).append(index)
    heldout = set()
    for indices in by_class.values():
        heldout.update(rng.sample(indices, len(indices) // 5))

    def sample(index: int) -> dict:
        pixels = (digits.images[index] * (255 / 16)).astype(np.uint8)
        image = Image.fromarray(pixels, "L").resize((32, 32), Image.BICUBIC).convert("RGB")
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        word = WORDS[int(digits.target[index])]
        captions = [t.format(word) for t in CAPTIONS]
        return {
            "__key__": f"{index:05d}",
            "png": buffer.getvalue(),
            "json": json.dumps({"captions": captions}),
            "cls": str(int(digits.target[index])),
        }

    order = list(range(len(digits.target)))
    rng.shuffle(order)
    train_set = [sample(i) for i in order if i not in heldout]
    held_set = [sample(i) for i in sorted(heldout)]
    train_sizes = write_shards(train_set, out / "train", per_shard=256)
    write_shards(held_set, out / "heldout", per_shard=len(held_set))
    classes = {"classnames": WORDS, "templates": EVAL_TEMPLATES}
    (out / "heldout" / "classes.json").write_text(json.dumps(classes))
    texts = [t.format(w) for t in CAPTIONS + EVAL_TEMPLATES for w in WORDS]
    train_tokenizer(texts * 20, out / "tokenizer", vocab_size=400)
    return {
        "train": str(out / "train" / f"{{00000..{len(train_sizes) - 1:05d}}}.tar"),
        "heldout": str(out / "heldout" / "00000.tar"),
        "tokenizer": str(out / "tokenizer"),
        "train_size": str(len(train_set)),
        "heldout_size": str(len(held_set)),
    }


def run(name: str, data: dict, out: Path, args, extra: list[str]) -> tuple[float, float]:
    evaluator = f"[{{kind: zeroshot, data: '{data['heldout']}'}}]"
    overrides = [
        "model.preset=tiny",
        f"data.train_shards={data['train']}",
        "data.caption_key=json.captions",
        f"data.batch_size={args.batch}",
        "data.num_workers=1",
        "data.shuffle_buffer=2000",
        f"text.tokenizer={data['tokenizer']}",
        f"optim.lr={args.lr}",
        "optim.weight_decay=0.1",
        "optim.warmup_steps=30",
        f"train.epochs={args.epochs}",
        f"train.seed={args.seed}",
        "train.log_every=50",
        "train.save_every=100000",
        "train.progress=false",
        "train.tensorboard=false",
        f"train.output_dir={out / name}",
        f"eval.evaluators={evaluator}",
        *extra,
    ]
    cfg = config_lib.load(None, overrides)
    start = time.perf_counter()
    summary = train(cfg)
    return summary["eval"]["zeroshot/top1"], time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=float, default=30)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = write_digits(tmp / "digits", args.seed)
        results = {
            "default recipe": run("default", data, tmp, args, []),
            "previous defaults": run("previous", data, tmp, args, PREVIOUS),
        }
    print(
        f"\nsklearn digits at 32 px: {data['train_size']} training, {data['heldout_size']} "
        f"held-out images, 10 classes (chance 0.100); {args.epochs:g} epochs, batch "
        f"{args.batch}, lr {args.lr:g}, seed {args.seed}"
    )
    print(f"{'recipe':>18} | zero-shot top-1 | wall s")
    for name, (top1, seconds) in results.items():
        print(f"{name:>18} | {top1:15.3f} | {seconds:6.0f}")
    ratio = results["default recipe"][0] / max(results["previous defaults"][0], 1e-9)
    print(f"top-1 ratio default / previous: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
