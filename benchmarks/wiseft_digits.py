#!/usr/bin/env python
"""WiSE-FT end to end on a CPU: pretrain a CLIP, fine-tune it through its zero-shot head, and
score the weight-space interpolations at several alphas on the fine-tuning distribution and on
shifted ones, with a PNG of the curve.

    python benchmarks/wiseft_digits.py [--pretrain-epochs 10] [--finetune-epochs 5]  # ~4 min
    python benchmarks/wiseft_digits.py --smoke     # 300 digits, 2 steps each, alphas 0 and 1

The setting mimics the paper's (Wortsman et al. 2022) on scikit-learn's 8x8 digits at 32 px:

* the zero-shot model A is a ``model.preset=tiny`` CLIP pretrained on captioned digits in three
  styles (as drawn, colours inverted, rotated by 40 degrees): a diverse corpus;
* the fine-tuned model B is A trained with ``objective.name=finetune`` on the labelled digits of
  one style only (as drawn): a narrow task, as ImageNet is for CLIP;
* ``vlcontrast weights wiseft A B`` scores zero-shot top-1 at alphas 0, 0.1, ..., 1 on held-out
  digits of each style: ``plain`` is the fine-tuning distribution, ``inverted`` and ``rotated``
  are the shifts.

Prints the table, the best alpha per style and where the JSON and the PNG are.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learning import DIGIT_CAPTIONS, DIGIT_TEMPLATES, WORDS, png  # noqa: E402

STYLES = {
    "plain": lambda image: image,
    "inverted": ImageOps.invert,
    "rotated": lambda image: image.rotate(40, resample=Image.BICUBIC),
}


def digit_images(seed: int):
    """(train, held-out) lists of (32 px RGB image, label), 20% of each class held out."""
    from sklearn.datasets import load_digits

    data = load_digits()
    rng = random.Random(seed)
    order = list(range(len(data.target)))
    rng.shuffle(order)
    held = set(order[: len(order) // 5])

    def image(index: int) -> Image.Image:
        pixels = (data.images[index] * (255 / 16)).astype(np.uint8)
        return Image.fromarray(pixels, "L").resize((32, 32), Image.BICUBIC).convert("RGB")

    train = [(image(i), int(data.target[i])) for i in order if i not in held]
    heldout = [(image(i), int(data.target[i])) for i in sorted(held)]
    return train, heldout


def write(rows, out: Path, captions: bool, rng: random.Random) -> str:
    from vlcontrast.data.shard_writer import write_shards

    def samples():
        for i, (image, label, style) in enumerate(rows):
            sample = {"__key__": f"{style}{i:06d}", "png": png(image), "cls": str(label)}
            if captions:
                sample["txt"] = rng.choice(DIGIT_CAPTIONS).format(WORDS[label])
            yield sample

    sizes = write_shards(samples(), out, per_shard=1000)
    classes = {"classnames": WORDS, "templates": DIGIT_TEMPLATES}
    (out / "classes.json").write_text(json.dumps(classes))
    return str(out / f"{{00000..{len(sizes) - 1:05d}}}.tar")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pretrain-epochs", type=float, default=10)
    parser.add_argument("--finetune-epochs", type=float, default=5)
    parser.add_argument("--finetune-lr", type=float, default=1e-3)
    parser.add_argument("--alphas", default="0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1")
    parser.add_argument("--out", default="", help="keep the runs and the curve here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--smoke", action="store_true", help="300 digits, 2 steps each, alphas 0 and 1 (the tests)"
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.pretrain_epochs, args.finetune_epochs, args.alphas = 0.1, 0.3, "0,1"

    from vlcontrast import cli
    from vlcontrast.data.vocab import train_tokenizer
    from vlcontrast.train import checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.out or tmp)
        rng = random.Random(args.seed)
        train, held = digit_images(args.seed)
        if args.smoke:
            train, held = train[:300], held[:90]
        diverse = [(STYLES[s](im), y, s) for im, y in train for s in STYLES]
        rng.shuffle(diverse)
        pretrain = write(diverse, root / "pretrain", True, rng)
        narrow = write([(im, y, "plain") for im, y in train], root / "finetune", False, rng)
        heldout = {
            s: write([(f(im), y, s) for im, y in held], root / f"heldout_{s}", False, rng)
            for s, f in STYLES.items()
        }
        captions = [DIGIT_CAPTIONS[i % 5].format(w) for i, w in enumerate(WORDS * 5)]
        train_tokenizer(captions, root / "tokenizer", vocab_size=0, kind="wordlevel")
        common = [
            f"text.tokenizer={root / 'tokenizer'}",
            "model.preset=tiny",
            f"train.seed={args.seed}",
            "train.progress=false",
            "data.num_workers=1",
        ]
        smoke_batch = ["data.batch_size=64"] if args.smoke else []
        a_run, b_run = root / "zeroshot", root / "finetuned"
        run = [f"data.train_shards={pretrain}", f"train.epochs={args.pretrain_epochs}"]
        run += smoke_batch
        assert cli.main(["train", *common, *run, f"train.output_dir={a_run}"]) == 0
        a = checkpoint.latest(a_run / "checkpoints")
        run = [
            f"data.train_shards={narrow}",
            f"train.epochs={args.finetune_epochs}",
            "objective.name=finetune",
            f"model.init_from={a}",
            f"optim.lr={args.finetune_lr}",
            "data.batch_size=128",
            *smoke_batch,
        ]
        assert cli.main(["train", *common, *run, f"train.output_dir={b_run}"]) == 0
        b = checkpoint.latest(b_run / "checkpoints")
        data = [arg for s in STYLES for arg in ("--data", heldout[s])]
        command = ["weights", "wiseft", str(a), str(b), *data, "--out", str(root / "curve")]
        code = cli.main([*command, "--alphas", args.alphas, "--workers", "0"])
        print("styles in column order: " + ", ".join(STYLES) + " (plain: the fine-tuning one)")
        if not args.out:
            print("(run with --out DIR to keep the PNG)")
        return code


if __name__ == "__main__":
    sys.exit(main())
