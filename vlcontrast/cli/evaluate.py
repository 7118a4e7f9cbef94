"""``vlcontrast eval KIND``: evaluate a checkpoint. The flags of each kind are generated from the
evaluator schema (``config.EvaluatorConfig``: the kinds each field serves, its help, type and
default), so the command line and run files cannot drift apart."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from pathlib import Path

from vlcontrast.eval_config import ALL_EVAL, EvalConfig, EvaluatorConfig

EVAL_KINDS = {
    "zeroshot": "zero-shot classification: top-1/top-5, mean per-class recall, confusion matrix",
    "retrieval": "image<->text retrieval on captioned data: recall@1/5/10, median rank",
    "linear-probe": "logistic regression on frozen image embeddings (L2 penalty swept on a "
    "validation split of --train-data)",
    "knn": "weighted k-nearest-neighbour classification on frozen image embeddings",
    "class-retrieval": "retrieval by class on labelled images: Recall@K, R-precision, MAP@R "
    "(Musgrave et al. 2020), the set against itself or against --gallery",
    "dense-knn": "segmentation by patch kNN on frozen feature maps: mean IoU and pixel accuracy "
    "of held-out masks labelled from the training masks' patches (shards with mask.png)",
    "dense-linear": "segmentation by a linear classifier on every patch of frozen feature maps, "
    "its logits upsampled to the pixels (L2 penalty swept on held-out training images): mean "
    "IoU and pixel accuracy (shards with mask.png)",
    "sts": "semantic textual similarity: Spearman correlation (x100) of the cosine similarity "
    "of sentence pairs against gold scores, on a table you supply",
}
DATA_HELP = (
    ": a shard pattern ('val/{00000..00009}.tar'), an ImageFolder directory (root/CLASS/IMG), or "
    "a Hugging Face dataset: a save_to_disk directory, a local dataset folder or 'hf:NAME'"
)
REQUIRED = {"data", "train_data"}


def add_commands(sub) -> None:
    evaluate = sub.add_parser(
        "eval",
        help="evaluate a checkpoint: zeroshot, retrieval, linear-probe, knn, class-retrieval, "
        "dense-knn, dense-linear, sts",
        description="Evaluate a checkpoint; the model, preprocessing and tokenizer are rebuilt "
        "from the checkpoint alone. Prints a table and, with --json, writes every number. Runs "
        "in one process or under torchrun (each rank embeds its share).",
    )
    kinds = evaluate.add_subparsers(dest="kind", required=True)
    for kind, help_text in EVAL_KINDS.items():
        add_eval_arguments(kinds.add_parser(kind, help=help_text, description=help_text), kind)


def schema_fields(kind: str) -> list[tuple[str, dataclasses.Field, typing.Any]]:
    """The evaluator fields that evaluator ``kind`` (``linear_probe`` style) uses."""
    hints = typing.get_type_hints(EvaluatorConfig)
    return [
        (f.name, f, hints[f.name])
        for f in dataclasses.fields(EvaluatorConfig)
        if kind in f.metadata.get("kinds", ())
    ]


def add_eval_arguments(parser: argparse.ArgumentParser, kind: str) -> None:
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="a checkpoint (step_*), a run folder or RUN/latest (its newest checkpoint)",
    )
    for name, f, typ in schema_fields(kind.replace("-", "_")):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        default = f.metadata.get("kind_defaults", {}).get(kind.replace("-", "_"), default)
        shards_only = kind.replace("-", "_") not in ALL_EVAL  # sts, dense-knn, dense-linear
        text = f.metadata["help"] + (DATA_HELP if name == "data" and not shards_only else "")
        kwargs: dict[str, typing.Any] = {"default": default, "help": text}
        if name in REQUIRED:
            kwargs["required"] = True
        elif default not in ("", []):
            kwargs["help"] += " (default: %(default)s)"
        if typing.get_origin(typ) is list:
            kwargs.update(nargs="+", type=typing.get_args(typ)[0])
        elif typ in (int, float):
            kwargs["type"] = typ
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        parser.add_argument("--" + name.replace("_", "-"), **kwargs)
    parser.add_argument(
        "--batch-size", type=int, default=EvalConfig.batch_size, help="default: %(default)s"
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="dataloader workers per process (default: 2)"
    )
    parser.add_argument("--json", default="", help="write every result to this JSON file")
    parser.add_argument(
        "--weights",
        choices=["model", "ema"],
        default="model",
        help="the checkpoint's weights, or the moving average of them that a run with "
        "train.ema keeps (default: model)",
    )
    parser.add_argument(
        "--allow-download",
        action="store_true",
        help="let a checkpoint whose config names a hub model fetch that model's config "
        "(by default a checkpoint loads only what it contains)",
    )
    if kind not in ("retrieval", "sts"):
        parser.add_argument(
            "--plot",
            default="",
            help="confusion-matrix PNG (default: beside --json); dense-knn and dense-linear "
            "also draw the first held-out images with their true and predicted masks beside it "
            "(NAME.examples.png)",
        )


def cmd_eval(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    from vlcontrast import config as config_lib
    from vlcontrast.eval import report
    from vlcontrast.eval.runner import missing_tower, run_evaluators
    from vlcontrast.models.load import load_model

    model, tokenizer, cfg = load_model(Path(args.checkpoint), args.allow_download, args.weights)
    kind = args.kind.replace("-", "_")
    if found := missing_tower(cfg, kind):
        kinds = ", ".join(k.replace("_", "-") for k in found[1])
        print(
            f"vlcontrast eval {args.kind}: needs a {found[0]} tower, and {args.checkpoint} "
            f"(model.kind={cfg.model.kind}) has none; it can run: {kinds}",
            file=sys.stderr,
        )
        return 2
    entry = {"kind": kind, **{name: getattr(args, name) for name, _, _ in schema_fields(kind)}}
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
    if plot and "examples" in result:  # the dense kinds: what the masks look like
        examples = str(Path(args.plot or args.json).with_suffix(".examples.png"))
        miou = result["metrics"]["miou"]
        title = f"{args.kind} on {args.checkpoint}: mean IoU {miou:.3f}; first held-out images"
        report.save_segmentation_png(result["examples"], result["classnames"], examples, title)
        print(f"examples: {examples}")
    return 0
