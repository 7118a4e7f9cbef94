"""The ``vlcontrast data ...`` and ``vlcontrast shards inspect`` commands (a thin layer over
``vlcontrast.data.convert``, ``vlcontrast.data.synthetic`` and ``vlcontrast.data.inspect``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_commands(sub) -> None:
    data = sub.add_parser(
        "data",
        help="make shards (img2dataset layout) from images + captions, ImageFolder or HF",
        description="Write WebDataset shards in img2dataset's layout ({key}.jpg/.txt/.json, "
        "{shard}_stats.json, sizes.json). A rerun skips finished shards.",
    )
    makers = data.add_subparsers(dest="maker", required=True)
    synthetic = makers.add_parser("synthetic", help="the demo's coloured-shapes corpus")
    synthetic.add_argument("out", help="output directory")
    synthetic.add_argument("--train", type=int, default=12000, help="training samples")
    synthetic.add_argument("--heldout", type=int, default=1500, help="held-out samples")

    masks = makers.add_parser(
        "masks",
        help="the demo's shapes with segmentation masks, for 'vlcontrast eval dense-knn'",
        description="Write OUT/train and OUT/heldout shards of scenes of the demo's shapes "
        "(--objects per image, of random class, colour, size and place), each sample "
        "with a mask.png (0 background, 1-5 circle, square, triangle, star, cross) and "
        "classes.json beside the shards: the format 'eval dense-knn' reads.",
    )
    masks.add_argument("out", help="output directory")
    masks.add_argument("--train", type=int, default=1000, help="default: %(default)s")
    masks.add_argument("--heldout", type=int, default=200, help="default: %(default)s")
    masks.add_argument("--side", type=int, default=64, help="image side in px (%(default)s)")
    masks.add_argument(
        "--objects",
        type=int,
        default=3,
        help="shapes per image (%(default)s); 1 gives the demo corpus's images",
    )
    masks.add_argument(
        "--one-colour",
        action="store_true",
        help="every shape in one yellow on one ground tint: only the shapes tell images "
        "apart, not their colours (with --objects 1, the one setting where pretraining beat "
        "random init on the shape classes: docs/benchmarks.md)",
    )

    segmentation = makers.add_parser(
        "segmentation",
        help="your images + masks (VOC, ADE20K or any two folders) for 'eval dense-knn'",
        description="Write shards of image/mask pairs that 'eval dense-knn' and 'eval "
        "dense-linear' read: each mask MASKS/ID.png (one 8-bit channel, each pixel a class "
        "index, 255 ignored; palette, 16-bit and grey-as-RGB PNGs are read as their values) "
        "with the image IMAGES/ID.jpg (.png, .webp, ...) of the same size. Pairs whose image or "
        "mask is missing, unreadable, of another size, colour-coded or a JPEG are skipped and "
        "counted by reason. VOC 2012: --images VOC2012/JPEGImages --masks "
        "VOC2012/SegmentationClass --ids VOC2012/ImageSets/Segmentation/train.txt.",
    )
    segmentation.add_argument("--images", required=True, help="the images' folder")
    segmentation.add_argument("--masks", required=True, help="the masks' folder (ID.png)")
    segmentation.add_argument("--out", required=True, help="output directory")
    segmentation.add_argument(
        "--ids", default=None, help="a file of IDs, one a line (default: every mask under --masks)"
    )
    segmentation.add_argument(
        "--classes",
        default=None,
        help="class names, index = pixel value: JSON list or one a line; written as "
        "classes.json beside the shards",
    )
    segmentation.add_argument("--per-shard", type=int, default=1000, help="pairs per shard")
    segmentation.add_argument(
        "--reduce-zero-label",
        action="store_true",
        help="label 0 is 'other' (ADE20K): ignore it and move every other label down by one, "
        "as mmsegmentation's reduce_zero_label",
    )

    example = makers.add_parser(
        "example",
        help="a folder of example images + captions.csv to try the commands on",
        description="Write N images of the demo's coloured shapes as OUT/images/*.jpg and "
        "OUT/captions.csv (columns image, caption, label): the layout of your own images and "
        "captions table, for trying 'data captions' and what follows.",
    )
    example.add_argument("out", help="output directory")
    example.add_argument("-n", type=int, default=200, help="images (default: %(default)s)")
    example.add_argument("--seed", type=int, default=0, help="default: %(default)s")

    captions = makers.add_parser("captions", help="an image folder + a captions table")
    captions.add_argument("--images", required=True, help="folder the image paths start from")
    captions.add_argument("--table", required=True, help="captions: .csv, .tsv, .jsonl, .parquet")
    captions.add_argument("--image-column", default="image", help="default: %(default)s")
    captions.add_argument("--caption-column", default="caption", help="default: %(default)s")
    captions.add_argument(
        "--label-column",
        default=None,
        help="class labels, written as cls + classes.json for kNN / zero-shot evaluation "
        "(default: the 'label' column if the table has one)",
    )
    captions.add_argument(
        "--label-from-folder",
        action="store_true",
        help="label each image by the folder it sits in (images/cat/1.jpg -> cat)",
    )

    folder = makers.add_parser("imagefolder", help="an ImageFolder tree (root/CLASS/IMAGE)")
    folder.add_argument("root", help="the tree's root")
    folder.add_argument(
        "--templates",
        nargs="+",
        default=["a photo of a {}."],
        help="caption templates with {} for the class name; one is picked per image",
    )

    images = makers.add_parser(
        "images",
        help="a folder of images, no captions or labels (for SimCLR, MoCo, DINO, ...)",
        description="Write every image under ROOT, at any depth, as image-only shards "
        "({key}.jpg and {key}.json with its path; no captions, no labels): what the "
        "self-supervised methods (objective.name=simclr, mocov2, byol, dino, swav, densecl, "
        "...) train on. Unreadable, truncated and oversized images are skipped and counted.",
    )
    images.add_argument("root", help="the folder (searched at every depth)")

    hf = makers.add_parser("hf", help="a Hugging Face datasets dataset with image + text")
    hf.add_argument("name", help="save_to_disk directory, dataset folder or hub name")
    hf.add_argument("--split", default="train", help="default: %(default)s")
    hf.add_argument("--image-column", default="image", help="default: %(default)s")
    hf.add_argument("--text-column", default="text", help="str or list of str")

    pairs = makers.add_parser(
        "pairs",
        help="a table of text pairs (anchor, positive[, hard negatives]) for text_pairs",
        description="Write shards of text pairs for 'objective.name=text_pairs model.kind=text': "
        "{key}.txt is the anchor, {key}.json holds 'positive' and 'negatives'. Rows with an "
        "empty anchor or positive are skipped and counted.",
    )
    pairs.add_argument("--table", required=True, help=".csv, .tsv, .jsonl or .parquet")
    pairs.add_argument("--out", required=True, help="output directory")
    pairs.add_argument("--anchor-column", default="anchor", help="default: %(default)s")
    pairs.add_argument("--positive-column", default="positive", help="default: %(default)s")
    pairs.add_argument(
        "--negative-columns", nargs="*", default=[], help="hard negatives, one column each"
    )
    pairs.add_argument("--per-shard", type=int, default=10000, help="pairs per shard")

    for maker in (captions, folder, images, hf):
        maker.add_argument("--out", required=True, help="output directory")
        maker.add_argument("--per-shard", type=int, default=1000, help="samples per shard")
        maker.add_argument("--resize", type=int, default=0, help="shorter side max (0: keep)")
        maker.add_argument("--workers", type=int, default=1, help="parallel processes")
        maker.add_argument("--no-progress", action="store_true", help="no progress bar")

    shards = sub.add_parser("shards", help="look at shards")
    actions = shards.add_subparsers(dest="action", required=True)
    inspect = actions.add_parser(
        "inspect",
        help="counts, member keys, caption lengths and a contact sheet of a shard pattern",
        description="Reads the shards as training does and reports samples, members by "
        "extension, problems (missing image/caption, truncated shards), a caption-length "
        "histogram, and writes a PNG contact sheet of images drawn at random from all the shards "
        "with their captions.",
    )
    inspect.add_argument("urls", help="shard pattern, e.g. 'data/{00000..00099}.tar'")
    inspect.add_argument("--caption-key", default="txt", help="txt or json.FIELD")
    inspect.add_argument("--sheet", default="contact_sheet.png", help="PNG path ('' for none)")
    inspect.add_argument("--samples", type=int, default=16, help="images on the sheet")
    inspect.add_argument("--json", default="", help="also write the statistics here")
    inspect.add_argument(
        "--decode",
        type=int,
        default=1000,
        help="decode the images of the first N samples to count corrupt ones (-1: all; 0: "
        "none; default: %(default)s)",
    )


def cmd_data(args: argparse.Namespace) -> int:
    from vlcontrast.data import convert

    if args.maker == "example":
        from vlcontrast.data.synthetic import example_folder

        table = example_folder(args.out, args.n, args.seed)
        print(f"{args.n} images in {Path(args.out) / 'images'}, captions in {table}")
        print(
            f"next: vlcontrast data captions --images {Path(args.out) / 'images'} "
            f"--table {table} --out SHARDS"
        )
        return 0
    if args.maker == "synthetic":
        from vlcontrast.data.synthetic import make_corpus

        paths = make_corpus(args.out, n_train=args.train, n_heldout=args.heldout)
        print(json.dumps(paths, indent=2))
        return 0
    if args.maker == "masks":
        from vlcontrast.data.synthetic import make_masked_set

        try:
            make_masked_set(
                args.out, args.train, args.heldout, args.side, args.objects, args.one_colour
            )
        except ValueError as err:  # the library's own check, before anything is written
            print(f"vlcontrast data masks: --{err}", file=sys.stderr)
            return 2
        train, held = Path(args.out) / "train", Path(args.out) / "heldout"
        print(f"{args.train} + {args.heldout} masked images in {train} and {held}")
        print(
            f"next: vlcontrast eval dense-knn --checkpoint RUN/latest --train-data "
            f"'{train}/00000.tar' --data '{held}/00000.tar'"
        )
        return 0
    if args.maker == "pairs":
        return make_pairs(args)
    if args.maker == "segmentation":
        return make_segmentation(args)
    try:
        if args.maker == "captions":
            source = convert.CaptionTable(
                args.images,
                args.table,
                args.image_column,
                args.caption_column,
                args.label_column,
                args.label_from_folder,
            )
        elif args.maker == "imagefolder":
            source = convert.ClassFolder(args.root, args.templates)
        elif args.maker == "images":
            source = convert.ImageFiles(args.root)
        else:
            source = convert.HFImageText(args.name, args.split, args.image_column, args.text_column)
    except (ValueError, OSError) as err:
        print(f"vlcontrast data {args.maker}: {err}", file=sys.stderr)
        return 2
    try:
        summary = convert.build_shards(
            source, args.out, args.per_shard, args.resize, args.workers, not args.no_progress
        )
    except convert.OtherSource as err:  # another source's shards in --out, refused unwritten
        print(f"vlcontrast data {args.maker}: {err}", file=sys.stderr)
        return 2
    print(convert.summary_line(summary))
    if getattr(source, "loose", 0):
        print(
            f"note: {source.loose} image(s) directly under {args.root} are in no class folder "
            f"and were left out (root/CLASS/IMAGE)"
        )
    shards = f"'{summary['pattern']}'"
    print(f"next: vlcontrast shards inspect {shards} --sheet shards.png")
    if args.maker == "images":
        # the default batch (256) needs 256 images; fewer get the largest power of two that
        # leaves at least two batches an epoch
        samples, batch = summary["samples"], ""
        if samples < 512:
            batch = f" data.batch_size={max(2, 1 << max(1, (samples // 2).bit_length() - 1))}"
        print(
            f"      vlcontrast train model.preset=tiny model.kind=image objective.name=simclr "
            f"data.train_shards={shards} train.epochs=100{batch}"
        )
    else:
        print(f"      vlcontrast tokenizer train --shards {shards} --out TOKENIZER")
    return 0


def make_segmentation(args: argparse.Namespace) -> int:
    from vlcontrast.data.masks import write_segmentation_shards

    if args.per_shard < 1:
        print("vlcontrast data segmentation: --per-shard must be at least 1", file=sys.stderr)
        return 2
    try:
        summary = write_segmentation_shards(
            args.images,
            args.masks,
            args.out,
            args.ids,
            args.classes,
            args.per_shard,
            args.reduce_zero_label,
            progress=True,
        )
    except ValueError as err:
        print(f"vlcontrast data segmentation: --{err}", file=sys.stderr)
        return 2
    skipped = summary["skipped"] or "none"
    if not summary["samples"]:
        print(
            f"vlcontrast data segmentation: no pair of an image and a mask could be written "
            f"(skipped: {skipped}); check --images, --masks and --ids",
            file=sys.stderr,
        )
        return 1
    shards = summary["shards"]
    pattern = shards[0] if len(shards) == 1 else f"{{{shards[0][:-4]}..{shards[-1][:-4]}}}.tar"
    print(f"{summary['samples']} image/mask pairs in {len(shards)} shard(s) under {args.out}")
    print(f"skipped: {skipped}")
    print(
        "next: vlcontrast eval dense-knn --checkpoint RUN/latest "
        f"--train-data '{args.out}/{pattern}' --data HELDOUT_SHARDS"
    )
    return 0


def make_pairs(args: argparse.Namespace) -> int:
    from vlcontrast.data.text_pairs import write_pair_shards

    try:
        summary = write_pair_shards(
            args.table,
            args.out,
            args.anchor_column,
            args.positive_column,
            tuple(args.negative_columns),
            args.per_shard,
        )
    except (ValueError, OSError) as err:
        print(f"vlcontrast data pairs: {err}", file=sys.stderr)
        return 2
    last = f"{summary['shards'] - 1:05d}"
    print(
        f"{summary['pairs']} pairs in {summary['shards']} shard(s) under {args.out}; skipped: "
        f"{summary['skipped'] or 'none'}"
    )
    negatives = len(args.negative_columns)
    extra = f" objective.text_pairs.negatives={negatives}" if negatives else ""
    print(
        f"next: vlcontrast train model.kind=text objective.name=text_pairs{extra} "
        f"data.train_shards='{args.out}/{{00000..{last}}}.tar' train.epochs=1 ..."
    )
    return 0


def cmd_shards(args: argparse.Namespace) -> int:
    from vlcontrast.config import ConfigError
    from vlcontrast.data.inspect import contact_sheet, inspect_shards, report

    try:
        stats = inspect_shards(args.urls, args.caption_key, args.samples, decode=args.decode)
    except ValueError as err:
        raise ConfigError(f"URLS: {str(err).removeprefix('data.train_shards: ')}") from None
    print(report(stats))
    examples = stats.pop("examples")
    if args.sheet and examples:
        contact_sheet(examples, args.sheet)
        print(f"contact sheet: {args.sheet} ({len(examples)} images)")
    if args.json:
        Path(args.json).write_text(json.dumps(stats, indent=2) + "\n")
    return 0
