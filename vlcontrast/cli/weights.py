"""``vlcontrast import hf DIR --out CKPT`` (or ``import openclip FILE --config JSON``) and
``vlcontrast export CKPT --to hf|safetensors OUT``: released CLIP weights in, our checkpoints out
(a thin layer over ``models.hf_clip`` and ``models.openclip``); ``vlcontrast checkpoint
consolidate CKPT`` turns an FSDP run's sharded checkpoint into single files
(``train.consolidate``), ``checkpoint convert`` one of the earlier, pickled sharded format, on
the user's word (``train.legacy_shards``); ``vlcontrast weights interpolate A B --alpha X --out
C`` mixes two checkpoints' weights (WiSE-FT, ``models.interpolate``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_commands(sub) -> None:
    imp = sub.add_parser(
        "import",
        help="a released CLIP (Hugging Face CLIPModel directory, OpenCLIP file) or image "
        "backbone (DINO, SwAV, MoCo, DenseCL, timm) as a vlcontrast checkpoint",
        description="Read a CLIPModel save_pretrained directory (config.json, model.safetensors "
        "or pytorch_model.bin, tokenizer and preprocessor files) and write a vlcontrast "
        "checkpoint directory that eval, search and training (train.resume or as the start of "
        "fine-tuning) read. The vision tower becomes timm's CLIP ViT, the text tower "
        "transformers' CLIPTextModel. 'import backbone FILE --model ARCH' does the same for an "
        "image backbone's weights as their authors saved them (the encoder is found under its "
        "wrapper and prefix; heads are left out); nothing is unpickled beyond tensors.",
    )
    imp.add_argument(
        "format",
        choices=["hf", "openclip", "backbone"],
        help="hf: a transformers CLIPModel directory; openclip: an OpenCLIP "
        "checkpoint file (.bin/.pt/.safetensors) with --config; backbone: an image backbone's "
        "weights (a timm or torchvision state dict, or a released DINO, SwAV, MoCo or DenseCL "
        "checkpoint) with --model, as an image-only checkpoint for eval knn, linear-probe, "
        "dense-knn and index",
    )
    imp.add_argument("source", help="the directory or file (download it first: nothing is fetched)")
    imp.add_argument("--out", required=True, help="new checkpoint directory")
    imp.add_argument(
        "--config",
        default="",
        help="openclip: open_clip_config.json or the model config JSON (ViT-B-32.json)",
    )
    imp.add_argument(
        "--tokenizer",
        default="",
        help="openclip: a tokenizer directory (e.g. "
        "a CLIPTokenizer saved with save_pretrained); hf: the directory's own",
    )
    imp.add_argument(
        "--model",
        default="",
        help="backbone: the timm architecture the file holds (resnet50, vit_small_patch16_224); "
        "a timm model folder (config.json + model.safetensors) names its own",
    )
    imp.add_argument(
        "--model-kwargs",
        default=None,
        help="backbone: its timm arguments, YAML ('{patch_size: 8}' for DINO's ViT-S/8; "
        "default: the folder's, else none)",
    )
    imp.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="backbone: the evaluation size (default: the folder's, else 224)",
    )
    imp.add_argument(
        "--eval-crop",
        type=float,
        default=None,
        help="backbone: the share of the centred square evaluation keeps (default: the "
        "folder's crop_pct, else 0.875: ImageNet's resize 256, centre 224, the protocol of "
        "DINO's, SwAV's and MoCo's published figures; 1 keeps it whole)",
    )
    imp.add_argument(
        "--statistics",
        choices=["imagenet", "clip"],
        default=None,
        help="backbone: the mean and std the weights were trained with (default: the "
        "folder's, else imagenet: DINO's, SwAV's, MoCo's, DenseCL's and timm's ResNets')",
    )
    exp = sub.add_parser(
        "export",
        help="a vlcontrast checkpoint as a transformers CLIPModel directory, plain safetensors "
        "or a timm model folder (the image backbone)",
        description="--to hf writes a directory that transformers loads without vlcontrast: "
        "CLIPModel.from_pretrained and CLIPProcessor for CLIP-shaped towers (a timm CLIP ViT, "
        "vit_*_clip_*, and a clip_text_model text tower), VisionTextDualEncoderModel and its "
        "processor for a timm CLIP ViT with another text tower (BERT, ...) trained with "
        "text.pooling=pooler; --to safetensors writes the plain state dict of any model; "
        "--to timm writes the image backbone (any method's) as a folder timm loads with "
        "timm.create_model('local-dir:OUT', pretrained=True): its weights under timm's names "
        "and its config with the preprocessing it was trained with.",
    )
    exp.add_argument(
        "checkpoint",
        help="a checkpoint (step_*), a run folder or RUN/latest (its newest checkpoint)",
    )
    exp.add_argument(
        "--to",
        required=True,
        choices=["hf", "safetensors", "timm"],
        help="hf: a transformers directory; safetensors: the plain state dict; timm: the image "
        "backbone as a folder timm.create_model('local-dir:OUT', pretrained=True) loads",
    )
    exp.add_argument(
        "--weights",
        choices=["model", "ema"],
        default="model",
        help="the weights, or their moving average (a run with train.ema) (default: model)",
    )
    exp.add_argument("out", help="output directory (hf) or file (safetensors)")
    weights = sub.add_parser(
        "weights",
        help="operations on model weights: interpolate two checkpoints, the WiSE-FT curve",
        description="interpolate A B --alpha X --out C: the weights (1 - X) A + X B of two "
        "checkpoints of one architecture (WiSE-FT, Wortsman et al. 2022: A zero-shot, B "
        "fine-tuned, X 0.5 keeps most of both), written as a checkpoint that eval, search, "
        "export and training read. Shapes are checked key by key. "
        "wiseft A B --data D [--data D2 ...] --out DIR: zero-shot top-1 of the interpolation "
        "at each of --alphas on every collection (the fine-tuning one and shifted ones), as a "
        "table, DIR/wiseft.json and the curve DIR/wiseft.png.",
    )
    weights.add_argument("action", choices=["interpolate", "wiseft"])
    weights.add_argument("a", help="checkpoint A (alpha 0): the zero-shot model")
    weights.add_argument("b", help="checkpoint B (alpha 1): its fine-tuned version")
    weights.add_argument("--alpha", type=float, help="interpolate: B's weight, in [0, 1]")
    weights.add_argument(
        "--out", required=True, help="interpolate: new checkpoint; wiseft: results directory"
    )
    weights.add_argument(
        "--data",
        action="append",
        default=[],
        help="wiseft: a labelled collection (shards with classes.json, ImageFolder, HF); repeat",
    )
    weights.add_argument(
        "--alphas",
        default="0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1",
        help="wiseft: the alphas to score, comma-separated (default: 0 to 1 by 0.1)",
    )
    weights.add_argument("--classes", default="", help="wiseft: class names file (default: data's)")
    weights.add_argument(
        "--templates", nargs="*", default=[], help="wiseft: prompt templates (default: data's)"
    )
    weights.add_argument("--batch-size", type=int, default=256, help="wiseft: images per batch")
    weights.add_argument("--workers", type=int, default=2, help="wiseft: decoding processes")
    ckpt = sub.add_parser(
        "checkpoint",
        help="consolidate an FSDP run's sharded checkpoint into single files, or convert one "
        "of the earlier sharded format",
        description="consolidate: read the shards that every rank of a train.fsdp run wrote "
        "(sharded/: safetensors files and a JSON index) in one process and write the "
        "checkpoint with model.safetensors and the full optimizer state in state.safetensors, "
        "the layout of a DDP run. Training (on any number of ranks), eval, search and export "
        "read sharded checkpoints as they are; this is for sharing the weights as one file or "
        "for tools that expect it. It needs host memory for the whole model and optimizer "
        "state. convert: the same for a checkpoint of the earlier sharded format "
        "(sharded/.metadata, a pickle that can run code), which nothing else reads; it asks "
        "for --trust-pickled-metadata, your word that you trust where the file came from.",
    )
    ckpt.add_argument("action", choices=["consolidate", "convert"])
    ckpt.add_argument("checkpoint", help="a sharded checkpoint directory (step_*)")
    ckpt.add_argument("--out", default="", help="new directory (default: replace in place)")
    ckpt.add_argument(
        "--trust-pickled-metadata",
        action="store_true",
        help="convert: read the earlier format's pickled metadata (it can run code: only for "
        "checkpoints you trust)",
    )


def cmd_import(args: argparse.Namespace) -> int:
    from vlcontrast.models.hf_clip import import_hf
    from vlcontrast.models.load import save_model_dir

    try:
        if args.format == "openclip":
            from vlcontrast.models.openclip import import_openclip

            if not args.config:
                raise ValueError("--config: an OpenCLIP import needs the model config JSON")
            model, tokenizer, cfg = import_openclip(args.source, args.config, args.tokenizer)
        elif args.format == "backbone":
            model, tokenizer, cfg = backbone(args)
        else:
            model, tokenizer, cfg = import_hf(args.source)
        out = save_model_dir(model, tokenizer, cfg, args.out)
    except (ValueError, OSError) as err:
        print(f"vlcontrast import: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - a stranger's files: one line, never a traceback
        first = (str(err).strip().splitlines() or [""])[0][:300]
        print(
            f"vlcontrast import: could not read {args.source} ({type(err).__name__}: {first}); "
            f"check that it is a complete, unmodified {args.format} release",
            file=sys.stderr,
        )
        return 2
    print(f"imported {args.source} -> {out}")
    if args.format == "backbone":
        sets = "--train-data TRAIN --data VAL"
        print(f"  evaluate: vlcontrast eval knn --checkpoint {out} {sets}")
        print(f"  segment:  vlcontrast eval dense-knn --checkpoint {out} {sets}")
        # its config.json carries the architecture and the statistics the weights expect
        print(
            f"  pretrain further: vlcontrast train {out}/config.json model.init_from={out} "
            "objective.name=METHOD data.train_shards=SHARDS"
        )
        return 0
    print(f"  evaluate: vlcontrast eval zeroshot --checkpoint {out} --data DATA")
    print(f"  fine-tune: vlcontrast train RUN.yaml model.init_from={out}")
    return 0


def backbone(args: argparse.Namespace):
    """``import backbone``: the flags checked, then ``models.backbone_import``."""
    import yaml

    from vlcontrast.models.backbone_import import import_backbone

    kwargs = None
    if args.model_kwargs is not None:
        try:
            kwargs = yaml.safe_load(args.model_kwargs)
        except yaml.YAMLError as err:
            raise ValueError(f"--model-kwargs: not YAML ({err})") from None
        if not isinstance(kwargs, dict):
            raise ValueError(f"--model-kwargs: {args.model_kwargs!r} is not a mapping")
    if args.image_size is not None and args.image_size < 1:
        raise ValueError("--image-size: must be at least 1")
    if args.eval_crop is not None and not 0.1 <= args.eval_crop <= 1:
        raise ValueError("--eval-crop: must be between 0.1 and 1")
    return import_backbone(
        args.source, args.model, kwargs, args.image_size, args.statistics, args.eval_crop
    )


def cmd_export(args: argparse.Namespace) -> int:
    from safetensors.torch import save_model

    from vlcontrast.models.hf_clip import export_hf
    from vlcontrast.models.load import load_model

    try:
        model, tokenizer, cfg = load_model(Path(args.checkpoint), weights=args.weights)
        if args.to == "hf":
            export_hf(model, tokenizer, cfg, args.out)
        elif args.to == "timm":
            from vlcontrast.models.timm_export import export_timm

            export_timm(model, cfg, args.out)
        else:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            save_model(model, args.out)
    except (ValueError, OSError) as err:
        print(f"vlcontrast export: {err}", file=sys.stderr)
        return 2
    print(f"exported {args.checkpoint} -> {args.out} ({args.to})")
    if args.to == "timm":
        print(f'  in timm: timm.create_model("local-dir:{args.out}", pretrained=True)')
    return 0


def cmd_checkpoint(args: argparse.Namespace) -> int:
    from vlcontrast.schema import ConfigError

    try:
        if args.action == "convert":
            from vlcontrast.train.legacy_shards import convert

            out = convert(args.checkpoint, args.trust_pickled_metadata, args.out or None)
        else:
            from vlcontrast.train.consolidate import consolidate

            out = consolidate(args.checkpoint, args.out or None)
    except (ConfigError, OSError) as err:
        print(f"vlcontrast checkpoint: {err}", file=sys.stderr)
        return 2
    done = "converted" if args.action == "convert" else "consolidated"
    print(f"{done} {args.checkpoint} -> {out} (model.safetensors, state.safetensors)")
    print(f"  evaluate: vlcontrast eval zeroshot --checkpoint {out} --data DATA")
    return 0


def cmd_weights(args: argparse.Namespace) -> int:
    from vlcontrast.schema import ConfigError

    try:
        if args.action == "wiseft":
            return wiseft(args)
        if args.alpha is None:
            raise ValueError("--alpha: interpolate needs B's weight, e.g. --alpha 0.5")
        from vlcontrast.models.interpolate import interpolate_checkpoints

        out = interpolate_checkpoints(args.a, args.b, args.alpha, args.out)
    except (ConfigError, ValueError, OSError, RuntimeError) as err:
        print(f"vlcontrast weights: {err}", file=sys.stderr)
        return 2
    print(f"interpolated {args.a} (x{1 - args.alpha:g}) and {args.b} (x{args.alpha:g}) -> {out}")
    print(f"  evaluate: vlcontrast eval zeroshot --checkpoint {out} --data DATA")
    return 0


def wiseft(args: argparse.Namespace) -> int:
    import json

    import torch

    from vlcontrast.eval.wiseft import format_curve, save_curve_png, wiseft_curve

    try:
        alphas = tuple(float(a) for a in args.alphas.split(","))
    except ValueError:
        message = f"--alphas: expected numbers separated by commas, got {args.alphas!r}"
        raise ValueError(message) from None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    curve = wiseft_curve(
        args.a,
        args.b,
        args.data,
        alphas,
        args.classes,
        args.templates,
        device,
        args.batch_size,
        args.workers,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "wiseft.json").write_text(json.dumps(curve, indent=1) + "\n")
    png = save_curve_png(curve, out / "wiseft.png")
    print(format_curve(curve))
    for data, alpha in curve["best_alpha"].items():
        print(f"best alpha on {data}: {alpha:g}")
    print(f"results: {out / 'wiseft.json'}, curve: {png}")
    best = curve["best_alpha"][args.data[-1]]
    print(f"  keep it: vlcontrast weights interpolate {args.a} {args.b} --alpha {best:g} --out DIR")
    return 0
