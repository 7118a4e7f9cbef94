"""``vlcontrast demo``, ``vlcontrast train`` and ``vlcontrast config``."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

OVERRIDES_HELP = (
    "dotted overrides of the run config, type-checked against the schema, e.g. optim.lr=3e-4 "
    "data.batch_size=64 train.resume=latest. Run 'vlcontrast config --keys' for every key."
)


def add_commands(sub) -> None:
    demo = sub.add_parser(
        "demo",
        help="generate the embedded corpus, train a tiny CLIP for a few minutes, evaluate it",
        description="Generates coloured-shape images with captions (once), trains a tiny CLIP on "
        "them, prints zero-shot top-1 on held-out images and a text->image query, and writes "
        "demo_summary.json. No downloads.",
    )
    demo.add_argument(
        "--out", default="vlcontrast_demo", help="output directory (default: %(default)s)"
    )
    demo.add_argument("overrides", nargs="*", help=OVERRIDES_HELP)

    train = sub.add_parser(
        "train",
        help="train from a run config",
        description="Train from a YAML run file plus overrides. Launch on several GPUs or "
        "nodes with 'torchrun --nproc-per-node N -m vlcontrast.cli train ...' or "
        "'accelerate launch -m vlcontrast.cli train ...'.",
    )
    train.add_argument(
        "config",
        help="YAML run file (only what differs from the defaults), or straight away the first "
        "override when there is no run file",
    )
    train.add_argument("overrides", nargs="*", help=OVERRIDES_HELP)

    show = sub.add_parser("config", help="print the resolved config (defaults + file + overrides)")
    show.add_argument("config", nargs="?", default=None, help="YAML run file")
    show.add_argument("overrides", nargs="*", help=OVERRIDES_HELP)
    show.add_argument("--keys", action="store_true", help="list every key with type and default")


def cmd_demo(args: argparse.Namespace) -> int:
    from vlcontrast.demo import run_demo

    run_demo(args.out, args.overrides)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from vlcontrast import config as config_lib
    from vlcontrast.data.shards import DataError
    from vlcontrast.distributed import print0, shutdown
    from vlcontrast.train.checkpoint import CheckpointError
    from vlcontrast.train.loop import TrainingDiverged, train

    cfg = config_lib.load(*run_file_and_overrides(args))
    try:
        summary = train(cfg)
    except TrainingDiverged as err:
        print(f"vlcontrast: {err}", file=sys.stderr)
        return 3
    except CheckpointError as err:
        print(f"vlcontrast: {err}", file=sys.stderr)
        return 5
    except DataError as err:
        # Raised in a dataloader worker, the message carries the worker's traceback: keep the
        # original message (its last line).
        message = str(err).strip().splitlines()[-1].removeprefix(f"{DataError.__module__}.")
        print(f"vlcontrast: data error: {message.removeprefix('DataError: ')}", file=sys.stderr)
        return 4
    shutdown()  # every rank is done with the process group
    if summary["interrupted"]:
        print0(
            f"stopped by Ctrl-C after step {summary['steps']}; checkpoint: "
            f"{summary['checkpoint']}. Resume with the same command plus train.resume=latest"
        )
        return 130
    final = summary["final_loss"]
    loss = f", final loss {final:.4f}" if final is not None else " (nothing left to train)"
    print0(f"done: {summary['steps']} steps{loss}")  # the mean over ranks, printed once
    print0(f"checkpoint: {summary['checkpoint']}")
    if summary.get("curves"):
        print0(f"curves: {summary['curves']}")
    print0(next_commands(summary["checkpoint"], cfg))
    return 0


def next_commands(checkpoint: str, cfg) -> str:
    """What to run next with a fresh checkpoint, as ``demo`` prints it: the run's own first
    evaluator from the command line, else the usual one of its model kind; then search."""
    data = "HELDOUT"  # a held-out shard pattern or image folder of the user's
    spec = next((spec for spec in cfg.eval.evaluators if spec.data), None)
    data = spec.data if spec is not None else data
    lines = ["next:"]
    if spec is not None:
        extra = "".join(
            f" --{flag} {shlex.quote(value)}"
            for flag, value in (("train-data", spec.train_data), ("classes", spec.classes))
            if value
        )
        kind = spec.kind.replace("_", "-")
        data = shlex.quote(data)
        lines.append(f"  vlcontrast eval {kind} --checkpoint {checkpoint}{extra} --data {data}")
        data = "TEXTS" if cfg.model.kind == "text" else data
    elif cfg.model.kind == "text":
        lines.append(f"  vlcontrast eval sts --checkpoint {checkpoint} --data PAIRS_TABLE")
        data = "TEXTS"  # caption or pair shards: a text index embeds each item's caption
    elif cfg.model.kind == "dual":
        lines.append(f"  vlcontrast eval zeroshot --checkpoint {checkpoint} --data {data}")
    else:
        lines.append(
            f"  vlcontrast eval knn --checkpoint {checkpoint} --train-data TRAIN --data {data}"
        )
    lines.append(f"  vlcontrast index build --checkpoint {checkpoint} --data {data} --out INDEX")
    lines.append(
        '  vlcontrast search INDEX "a query"'
        if cfg.model.kind == "text"
        else "  vlcontrast serve INDEX"
    )
    return "\n".join(lines)


def cmd_config(args: argparse.Namespace) -> int:
    from vlcontrast import config as config_lib

    if args.keys:
        print("\n".join(config_lib.keys()))
        return 0
    cfg = config_lib.load(*run_file_and_overrides(args))
    print(json.dumps(config_lib.to_dict(cfg), indent=2))
    return 0


def run_file_and_overrides(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """``vlcontrast train a.b=1 ...`` without a run file: the first override took the run
    file's place on the command line."""
    if args.config and "=" in args.config and not Path(args.config).exists():
        return None, [args.config, *args.overrides]
    return args.config, args.overrides
