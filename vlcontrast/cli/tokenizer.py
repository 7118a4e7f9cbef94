"""``vlcontrast tokenizer train``: a tokenizer from the captions of your shards."""

from __future__ import annotations

import argparse


def add_commands(sub) -> None:
    tokenizer = sub.add_parser(
        "tokenizer",
        help="train a tokenizer on the captions of shards",
        description="Train a tokenizer on the captions of shards and save it (transformers "
        "layout) for text.tokenizer; the text tower's vocab_size then follows it.",
    )
    actions = tokenizer.add_subparsers(dest="action", required=True)
    train = actions.add_parser("train", help="train and save a tokenizer")
    train.add_argument("--shards", required=True, help="shard pattern, glob or directory")
    train.add_argument("--out", required=True, help="directory to save the tokenizer in")
    train.add_argument(
        "--vocab-size", type=int, default=8192, help="at most this many tokens (default: 8192)"
    )
    train.add_argument(
        "--kind",
        choices=("bpe", "wordlevel"),
        default="bpe",
        help="bpe: byte-level BPE, no unknown tokens (CLIP's kind); wordlevel: one token per "
        "word (default: %(default)s)",
    )
    train.add_argument(
        "--cased", action="store_true", help="keep case (default: lower-case, as CLIP's)"
    )
    train.add_argument("--caption-key", default="txt", help="txt or json.FIELD (default: txt)")
    train.add_argument(
        "--max-samples", type=int, default=0, help="train on the first N samples (0 = all)"
    )
    train.add_argument("--no-progress", action="store_true", help="no progress bar")


def cmd_tokenizer(args: argparse.Namespace) -> int:
    from vlcontrast.config import ConfigError
    from vlcontrast.data.vocab import caption_texts, train_tokenizer

    if args.vocab_size < 0 or args.max_samples < 0:
        raise ConfigError("--vocab-size and --max-samples: expected numbers >= 0")
    texts = caption_texts(args.shards, args.caption_key, args.max_samples, not args.no_progress)
    try:
        fast = train_tokenizer(texts, args.out, args.vocab_size, args.kind, not args.cased)
    except ValueError as err:
        raise ConfigError(f"--shards: {str(err).removeprefix('data.train_shards: ')}") from None
    print(f"tokenizer: {len(fast)} tokens ({args.kind}) saved in {args.out}")
    print(f"use it with: text.tokenizer={args.out}")
    return 0
