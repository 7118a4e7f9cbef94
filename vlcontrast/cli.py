"""Command line: a thin layer over the library; the only module that reads argv.

vlcontrast demo [--out DIR] [section.key=value ...]
vlcontrast train CONFIG [section.key=value ...]
vlcontrast eval zeroshot|retrieval|linear-probe|knn --checkpoint DIR --data DATA [--json OUT]
vlcontrast data synthetic|captions|imagefolder|hf ... --out DIR   (make shards)
vlcontrast shards inspect URLS [--sheet PNG]
vlcontrast config [CONFIG] [section.key=value ...]   (print the resolved config)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vlcontrast import cli_data
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

    evaluate = sub.add_parser(
        "eval",
        help="evaluate a checkpoint: zeroshot, retrieval, linear-probe, knn",
        description="Evaluate a checkpoint; the model, preprocessing and tokenizer are rebuilt "
        "from the checkpoint alone. Prints a table and, with --json, writes every number. Runs "
        "in one process or under torchrun (each rank embeds its share).",
    )
    kinds = evaluate.add_subparsers(dest="kind", required=True)
    for kind, help_text in EVAL_KINDS.items():
        add_eval_arguments(kinds.add_parser(kind, help=help_text, description=help_text), kind)
    cli_data.add_commands(sub)

    show = sub.add_parser("config", help="print the resolved config (defaults + file + overrides)")
    show.add_argument("config", nargs="?", default=None, help="YAML run file")
    show.add_argument("overrides", nargs="*", help=OVERRIDES_HELP)
    show.add_argument("--keys", action="store_true", help="list every key with type and default")
    return parser


EVAL_KINDS = {
    "zeroshot": "zero-shot classification: top-1/top-5, mean per-class recall, confusion matrix",
    "retrieval": "image<->text retrieval on captioned data: recall@1/5/10, median rank",
    "linear-probe": "logistic regression on frozen image embeddings (L2 penalty swept on a "
    "validation split of --train-data)",
    "knn": "weighted k-nearest-neighbour classification on frozen image embeddings",
}
DATA_HELP = (
    "a shard pattern ('val/{00000..00009}.tar'), an ImageFolder directory (root/CLASS/IMG), or a "
    "Hugging Face dataset: a save_to_disk directory, a local dataset folder or 'hf:NAME'"
)


def add_eval_arguments(parser: argparse.ArgumentParser, kind: str) -> None:
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory (step_*)")
    parser.add_argument("--data", required=True, help="evaluation set: " + DATA_HELP)
    if kind in ("linear-probe", "knn"):
        parser.add_argument("--train-data", required=True, help="labelled training set")
        parser.add_argument("--train-split", default="train", help="HF split of --train-data")
    parser.add_argument(
        "--format", default="auto", help="auto, wds, imagefolder or hf (default: %(default)s)"
    )
    parser.add_argument("--split", default="test", help="HF split of --data (default: test)")
    parser.add_argument(
        "--image-field", default="", help="shards: extensions (jpg;png), HF: column"
    )
    if kind == "retrieval":
        parser.add_argument(
            "--caption-field",
            default="",
            help="shards: extension (txt) or json.KEY; HF: column (caption); a list = several",
        )
    else:
        parser.add_argument("--label-field", default="", help="shards: cls; HF: label")
        parser.add_argument(
            "--classes", default="", help="class names: JSON or one per line (default: the data's)"
        )
    if kind == "zeroshot":
        parser.add_argument(
            "--templates",
            nargs="+",
            default=[],
            help="openai_imagenet, generic, a file, or templates with {} (default: the classes "
            "file's, else generic)",
        )
    if kind == "knn":
        parser.add_argument("--k", type=int, default=200, help="neighbours (default: 200)")
        parser.add_argument("--temperature", type=float, default=0.1, help="default: 0.1")
    parser.add_argument("--max-samples", type=int, default=0, help="only the first N (0 = all)")
    parser.add_argument("--batch-size", type=int, default=256, help="default: %(default)s")
    parser.add_argument("--workers", type=int, default=2, help="dataloader workers per process")
    parser.add_argument("--json", default="", help="write every result to this JSON file")
    if kind != "retrieval":
        parser.add_argument(
            "--plot", default="", help="confusion-matrix PNG (default: beside --json)"
        )


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
    from vlcontrast.data.shards import DataError
    from vlcontrast.train.loop import TrainingDiverged, train

    cfg = config_lib.load(args.config, args.overrides)
    try:
        summary = train(cfg)
    except TrainingDiverged as err:
        print(f"vlcontrast: {err}", file=sys.stderr)
        return 3
    except DataError as err:
        # Raised in a dataloader worker, the message carries the worker's traceback: keep the
        # original message (its last line).
        message = str(err).strip().splitlines()[-1].removeprefix(f"{DataError.__module__}.")
        print(f"vlcontrast: data error: {message.removeprefix('DataError: ')}", file=sys.stderr)
        return 4
    final = summary["final_loss"]
    loss = f", final loss {final:.4f}" if final is not None else " (nothing left to train)"
    print(f"done: {summary['steps']} steps{loss}")
    print(f"checkpoint: {summary['checkpoint']}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    from vlcontrast.eval import report
    from vlcontrast.eval.runner import run_evaluators
    from vlcontrast.models.load import load_model

    ckpt = Path(args.checkpoint)
    if not (ckpt / "model.safetensors").is_file():
        raise ConfigError(f"--checkpoint: {ckpt} is not a checkpoint directory (step_*)")
    model, tokenizer, cfg = load_model(ckpt)
    entry = {
        "kind": args.kind.replace("-", "_"),
        **{
            key: getattr(args, key)
            for key in EVALUATOR_ARGS
            if getattr(args, key, None) not in (None, "", [])
        },
    }
    eval_cfg = {"evaluators": [entry], "batch_size": args.batch_size, "num_workers": args.workers}
    config_lib.apply(cfg, {"eval": eval_cfg})
    state = PartialState()  # a process group under torchrun; one process otherwise
    model.to(state.device)
    results = run_evaluators(model, tokenizer, cfg, state.device, progress=True)
    if not state.is_main_process:
        return 0
    ((name, result),) = results.items()
    print(report.format_table(name, result))
    if args.json:
        report.write_json(results, args.json)
    plot = getattr(args, "plot", "") or (
        str(Path(args.json).with_suffix(".confusion.png")) if args.json else ""
    )
    if plot and "confusion" in result:
        report.save_confusion_png(result["confusion"], result["classnames"], plot)
        print(f"confusion matrix: {plot}")
    return 0


EVALUATOR_ARGS = [
    "data",
    "train_data",
    "format",
    "split",
    "train_split",
    "image_field",
    "label_field",
    "caption_field",
    "classes",
    "templates",
    "max_samples",
    "k",
    "temperature",
]


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
    "data": cli_data.cmd_data,
    "shards": cli_data.cmd_shards,
    "config": cmd_config,
}

if __name__ == "__main__":
    sys.exit(main())
