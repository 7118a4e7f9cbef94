#!/usr/bin/env python
"""Sentence embeddings end to end on the digits' captions: unsupervised SimCSE and paraphrase
pairs each train a small text tower, ``eval sts`` scores it on a written pairs table, and a
text index answers a query, against the same tower at random initialisation, in one run.

    python benchmarks/simcse_digits.py [--epochs 10] [--smoke]

Data that needs no download: the captions of ``benchmarks/ssl_digits.py``'s corpus (1,442
training captions such as "a handwritten seven" or "the digit seven written by hand", five
templates over ten digit words), with a tokenizer trained on them. The STS table is written from
the held-out captions: 400 caption pairs, gold score 5 when both name the same digit, else 0, so
a good embedding puts paraphrases of one number together. SimCSE (Gao et al. 2021) sees no
label and no pair: each caption twice through dropout. The text tower is a 2-layer BERT of
width 64 (dropout 0.1, BERT's and SimCSE's). Prints Spearman x100 before and after, and the top
hits of a text search over the held-out captions.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learning import WORDS, digits, write_corpus  # noqa: E402

from vlcontrast import cli  # noqa: E402
from vlcontrast import config as config_lib  # noqa: E402
from vlcontrast.eval.runner import run_evaluators  # noqa: E402
from vlcontrast.models import build_model  # noqa: E402
from vlcontrast.models.text_tower import follow_tokenizer, load_tokenizer  # noqa: E402
from vlcontrast.train.loop import train  # noqa: E402

BERT = (
    "{model_type: bert, hidden_size: 64, num_hidden_layers: 2, num_attention_heads: 4, "
    "intermediate_size: 128, max_position_embeddings: 32}"
)


def write_sts(held: list, path: Path, pairs: int, seed: int) -> None:
    """Caption pairs of the held-out set: score 5 for the same digit, 0 for another."""
    rng = random.Random(seed)
    lines = ["sentence1\tsentence2\tscore"]
    for k in range(pairs):
        (_, a, la), (_, b, lb) = rng.sample(held, 2)
        if k % 2 == 0:  # half the pairs share the digit
            b = next(text for _, text, label in rng.sample(held, len(held)) if label == la)
            lb = la
        lines.append(f"{a}\t{b}\t{5 if la == lb else 0}")
    path.write_text("\n".join(lines) + "\n")


def write_pairs(rows: list, out: Path, seed: int) -> str:
    """Paraphrase pairs through ``vlcontrast data pairs``: each training caption with another
    caption of the same digit (the labels give the pairs; the text tower never sees a label)."""
    rng = random.Random(seed)
    lines = ["anchor\tpositive"]
    for _, text, label in rows:
        other = next(t for _, t, lab in rng.sample(rows, len(rows)) if lab == label and t != text)
        lines.append(f"{text}\t{other}")
    (out / "pairs.tsv").write_text("\n".join(lines) + "\n")
    args = ["data", "pairs", "--table", str(out / "pairs.tsv"), "--out", str(out / "pairs")]
    if cli.main([*args, "--per-shard", "1000"]) != 0:
        raise SystemExit("vlcontrast data pairs failed")
    return str(out / "pairs" / "{00000..00001}.tar")


def overrides(data: dict, sts: Path, out: Path, args, mode: str = "simcse") -> list[str]:
    return [
        "model.kind=text",
        "objective.name=text_pairs",
        f"objective.text_pairs.mode={mode}",
        f"text.config={BERT}",
        f"text.tokenizer={data['tokenizer']}",
        "text.pooling=mean",
        "text.context_length=16",
        "model.embed_dim=64",
        f"data.train_shards={data['pairs'] if mode == 'pairs' else data['train']}",
        f"data.batch_size={args.batch}",
        "data.num_workers=1",
        "data.shuffle_buffer=2000",
        f"optim.lr={args.lr}",
        "optim.weight_decay=0.01",
        "optim.warmup_steps=10",
        f"train.epochs={args.epochs}",
        f"train.seed={args.seed}",
        "train.log_every=50",
        "train.save_every=100000",
        "train.progress=false",
        "train.tensorboard=false",
        f"train.output_dir={out}",
        f"eval.evaluators=[{{kind: sts, data: '{sts}'}}]",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=float, default=10)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)  # a small tower from scratch
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="a few steps: checks it runs")
    args = parser.parse_args(argv)
    if args.smoke:
        args.epochs, args.batch = 0.1, 16
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        train_rows, held, names, templates = digits(args.seed)
        data = write_corpus(train_rows, held, names, templates, tmp / "digits")
        sts = tmp / "sts.tsv"
        write_sts(held, sts, 40 if args.smoke else 400, args.seed)
        cfg = config_lib.load(None, overrides(data, sts, tmp / "run", args))
        config_lib.resolve(cfg)
        tokenizer = load_tokenizer(cfg.text)
        follow_tokenizer(cfg.text, tokenizer)
        random_init = run_evaluators(build_model(cfg).eval(), tokenizer, cfg)["sts"]["metrics"]
        data["pairs"] = write_pairs(train_rows, tmp, args.seed)
        rows = [("random init", random_init["spearman"], random_init["pearson"], 0.0)]
        for mode in ("simcse", "pairs"):
            start = time.perf_counter()
            run = overrides(data, sts, tmp / mode, args, mode)
            summary = train(config_lib.load(None, run))
            seconds = time.perf_counter() - start
            rows.append(
                (mode, summary["eval"]["sts/spearman"], summary["eval"]["sts/pearson"], seconds)
            )
            index = tmp / f"index_{mode}"
            build = ["index", "build", "--checkpoint", summary["checkpoint"], "--data"]
            if cli.main([*build, data["heldout"], "--out", str(index), "--no-progress"]) != 0:
                return 1
            query = f"the digit {WORDS[7]}"
            print(f"\n{mode}: text search over the held-out captions for {query!r}:")
            cli.main(["search", str(index), query, "-k", "5"])
    print(
        f"\nText pairs on the digits' captions: {len(train_rows)} training captions, "
        f"{args.epochs:g} epochs, batch {args.batch}, lr {args.lr:g}; STS table of "
        f"{int(random_init['pairs'])} held-out caption pairs (5: same digit, 0: another); "
        f"simcse: each caption twice through dropout; pairs: each caption with another "
        f"caption of its digit, in-batch negatives"
    )
    print(f"{'text tower':>12} | Spearman x100 | Pearson x100 | wall s")
    for name, rho, r, seconds in rows:
        print(f"{name:>12} | {rho:13.1f} | {r:12.1f} | {seconds:6.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
