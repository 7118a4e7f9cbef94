"""Command line: a thin layer over the library; the only package that reads argv.

vlcontrast demo [--out DIR] [section.key=value ...]
vlcontrast train CONFIG [section.key=value ...]
vlcontrast eval zeroshot|retrieval|linear-probe|knn --checkpoint DIR --data DATA [--json OUT]
vlcontrast data synthetic|captions|imagefolder|hf ... --out DIR   (make shards)
vlcontrast shards inspect URLS [--sheet PNG]
vlcontrast tokenizer train --shards URLS --out DIR [--vocab-size N] [--kind bpe|wordlevel]
vlcontrast config [CONFIG] [section.key=value ...]   (print the resolved config)
vlcontrast index build --checkpoint DIR --data URLS --out INDEX   (also: add, dedup, info)
vlcontrast search INDEX "a red circle" [-k 10] [--image PATH] [--json]
vlcontrast serve INDEX [--host 127.0.0.1] [--port 8000]
vlcontrast import hf HF_CLIP_DIR --out CKPT;  vlcontrast export CKPT --to hf|safetensors OUT
vlcontrast checkpoint consolidate CKPT [--out DIR]   (an FSDP run's shards -> single files)
vlcontrast checkpoint convert CKPT --trust-pickled-metadata   (the earlier sharded format)

One module per command group (``run``: demo, train, config; ``evaluate``; ``data``;
``tokenizer``; ``search``: index, search, serve; ``weights``: import, export, checkpoint); each
adds its sub-parsers and its ``cmd_*`` functions, which import the library lazily so ``--help``
is fast.
"""

from __future__ import annotations

import argparse
import sys

from vlcontrast.cli import data, evaluate, run, search, tokenizer, weights
from vlcontrast.schema import ConfigError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vlcontrast",
        description="Contrastive image-text training (CLIP) that is exact across ranks.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Start with 'vlcontrast demo'; train on your shards with 'vlcontrast train "
        "configs/clip_b32.yaml data.train_shards=/data/{00000..00099}.tar text.tokenizer=DIR' "
        "(make DIR with 'vlcontrast tokenizer train').",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run.add_commands(sub)
    evaluate.add_commands(sub)
    data.add_commands(sub)
    tokenizer.add_commands(sub)
    search.add_commands(sub)
    weights.add_commands(sub)
    return parser


COMMANDS = {
    "demo": run.cmd_demo,
    "train": run.cmd_train,
    "config": run.cmd_config,
    "eval": evaluate.cmd_eval,
    "data": data.cmd_data,
    "shards": data.cmd_shards,
    "tokenizer": tokenizer.cmd_tokenizer,
    "index": search.cmd_index,
    "search": search.cmd_search,
    "serve": search.cmd_serve,
    "weights": weights.cmd_weights,
    "import": weights.cmd_import,
    "export": weights.cmd_export,
    "checkpoint": weights.cmd_checkpoint,
}


def entry() -> None:
    """The ``vlcontrast`` console script: :func:`main`, with a Ctrl-C that got past a command's
    own handling (a second one during training, one during evaluation) as one line and exit
    status 130 instead of a traceback."""
    try:
        code = main()
    except KeyboardInterrupt:
        print("\nvlcontrast: interrupted", file=sys.stderr)
        code = 130
    except BrokenPipeError:  # `vlcontrast config --keys | head`: the reader left, quietly
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 1
    sys.exit(code)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ConfigError as err:
        print(f"vlcontrast: config error: {err}", file=sys.stderr)
        return 2
