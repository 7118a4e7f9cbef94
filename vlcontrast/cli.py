"""Command line: a thin layer over the library; the only module that reads argv.

vlcontrast demo [--out DIR] [section.key=value ...]
vlcontrast train CONFIG [section.key=value ...]
vlcontrast eval zeroshot --checkpoint DIR --data SHARDS [--classes JSON] [--json OUT]
vlcontrast data synthetic OUT_DIR [--train N] [--heldout N]
vlcontrast config [CONFIG] [section.key=value ...]   (print the resolved config)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vlcontrast import config as config_lib
from vlcontrast.config import ConfigError

OVERRIDES_HELP = (
    "dotted overrides of the run config, type-checked against the schema, e.g. optim.lr=3e-4 "
    "data.batch_size=64 train.resume=latest. Run 'vlcontrast config --keys' for every key."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vlcontrast",
        description="Contrastive image-text training (CLIP) that is exact across ranks.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Start with 'vlcontrast demo'; train on your shards with 'vlcontrast train "
        "configs/clip_vit_b32_bert.yaml data.train_shards=/data/{00000..00099}.tar'.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

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
    train.add_argument("config", help="YAML run file (only what differs from the defaults)")
    train.add_argument("overrides", nargs="*", help=OVERRIDES_HELP)

    evaluate = sub.add_parser("eval", help="evaluate a checkpoint")
    kinds = evaluate.add_subparsers(dest="kind", required=True)
    zeroshot = kinds.add_parser(
        "zeroshot",
        help="zero-shot classification on labelled shards",
        description="Rebuilds model, preprocessing and tokenizer from the checkpoint alone.",
    )
    zeroshot.add_argument("--checkpoint", required=True, help="checkpoint directory (step_*)")
    zeroshot.add_argument("--data", required=True, help="labelled shards (image + cls)")
    zeroshot.add_argument("--classes", default="", help="classes JSON (default: beside shards)")
    zeroshot.add_argument("--json", default="", help="write the metrics to this JSON file")

    data = sub.add_parser("data", help="make shards")
    makers = data.add_subparsers(dest="maker", required=True)
    synthetic = makers.add_parser("synthetic", help="the demo's coloured-shapes corpus")
    synthetic.add_argument("out", help="output directory")
    synthetic.add_argument("--train", type=int, default=12000, help="training samples")
    synthetic.add_argument("--heldout", type=int, default=1500, help="held-out samples")

    show = sub.add_parser("config", help="print the resolved config (defaults + file + overrides)")
    show.add_argument("config", nargs="?", default=None, help="YAML run file")
    show.add_argument("overrides", nargs="*", help=OVERRIDES_HELP)
    show.add_argument("--keys", action="store_true", help="list every key with type and default")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ConfigError as err:
        print(f"vlcontrast: config error: {err}", file=sys.stderr)
        return 2


def cmd_demo(args: argparse.Namespace) -> int:
    from vlcontrast.demo import run_demo

    run_demo(args.out, args.overrides)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from vlcontrast.train.loop import TrainingDiverged, train

    cfg = config_lib.load(args.config, args.overrides)
    try:
        summary = train(cfg)
    except TrainingDiverged as err:
        print(f"vlcontrast: {err}", file=sys.stderr)
        return 3
    final = summary["final_loss"]
    loss = f", final loss {final:.4f}" if final is not None else " (nothing left to train)"
    print(f"done: {summary['steps']} steps{loss}")
    print(f"checkpoint: {summary['checkpoint']}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from vlcontrast.eval.zeroshot import evaluate_zeroshot
    from vlcontrast.factory import load_for_eval

    ckpt = Path(args.checkpoint)
    if not (ckpt / "model.safetensors").is_file():
        raise ConfigError(f"--checkpoint: {ckpt} is not a checkpoint directory (step_*)")
    model, tokenizer, cfg = load_for_eval(ckpt)
    cfg.eval.zeroshot_shards, cfg.eval.classes = args.data, args.classes
    metrics = evaluate_zeroshot(model, tokenizer, cfg)["metrics"]
    for name, value in metrics.items():
        print(f"{name:>8}  {value:.4f}" if name != "n" else f"{name:>8}  {int(value)}")
    if args.json:
        Path(args.json).write_text(json.dumps(metrics, indent=2) + "\n")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from vlcontrast.data.synthetic import make_corpus

    paths = make_corpus(args.out, n_train=args.train, n_heldout=args.heldout)
    print(json.dumps(paths, indent=2))
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    if args.keys:
        print("\n".join(config_lib.keys()))
        return 0
    cfg = config_lib.load(args.config, args.overrides)
    print(json.dumps(config_lib.to_dict(cfg), indent=2))
    return 0


COMMANDS = {
    "demo": cmd_demo,
    "train": cmd_train,
    "eval": cmd_eval,
    "data": cmd_data,
    "config": cmd_config,
}

if __name__ == "__main__":
    sys.exit(main())
