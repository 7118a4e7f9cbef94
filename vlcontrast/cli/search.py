"""``vlcontrast index build|add|dedup|info``, ``vlcontrast search`` and ``vlcontrast serve``: a
thin layer over ``vlcontrast.search``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vlcontrast.search.uploads import MAX_UPLOAD_PIXELS

DATA_HELP = (
    "what to index: a shard pattern ('shards/{00000..00099}.tar', a glob or a directory), an "
    "ImageFolder directory or a Hugging Face dataset (save_to_disk directory or 'hf:NAME'); "
    "repeat --data for several collections"
)


def add_commands(sub) -> None:
    index = sub.add_parser(
        "index",
        help="build a search index of a collection from a checkpoint; add, dedup, info",
        description="A search index holds the image embeddings of a collection (computed by a "
        "checkpoint's image tower) and, per item, its key, caption and where its image is in "
        "its shard. Builds resume where they stopped; 'add' embeds only shards not yet indexed.",
    )
    actions = index.add_subparsers(dest="action", required=True)
    build = actions.add_parser(
        "build",
        help="embed a collection into a new index (resumable)",
        description="Embed every image of --data with the checkpoint's "
        "image tower. Under torchrun each rank embeds its share of shards. "
        "Rerun the same command to resume an interrupted build.",
    )
    build.add_argument(
        "--checkpoint",
        required=True,
        help="a checkpoint (step_*), a run folder or RUN/latest (its newest checkpoint)",
    )
    build.add_argument("--out", required=True, help="index directory")
    build.add_argument("--overwrite", action="store_true", help="replace an index in --out")
    build.add_argument(
        "--dtype",
        default="float16",
        choices=["float16", "float32"],
        help="stored embedding type (default: %(default)s)",
    )
    build.add_argument(
        "--allow-download",
        action="store_true",
        help="let a checkpoint that names a hub model fetch its config",
    )
    add = actions.add_parser("add", help="embed only the new shards of --data into an index")
    add.add_argument("index", help="index directory")
    for parser in (build, add):
        parser.add_argument("--data", required=True, action="append", help=DATA_HELP)
        add_allow_pipe(parser)
        parser.add_argument(
            "--format", default="auto", choices=["auto", "wds", "imagefolder", "hf"]
        )
        parser.add_argument(
            "--caption-field",
            default="",
            help="shards: txt (default) or json.FIELD; HF: the caption column (default caption)",
        )
        parser.add_argument(
            "--image-field",
            default="",
            help="shards: extensions such as 'jpg;png' (default: any image); HF: the image column",
        )
        parser.add_argument("--label-field", default="", help="shards: cls (default); HF: label")
        parser.add_argument("--split", default="train", help="HF split (default: %(default)s)")
        parser.add_argument("--batch-size", type=int, default=256, help="default: %(default)s")
        parser.add_argument(
            "--workers",
            type=int,
            default=2,
            help="decoding workers per process (default: %(default)s)",
        )
        parser.add_argument(
            "--faiss",
            default="none",
            choices=["none", "auto", "flat", "hnsw", "ivfpq"],
            help="also build an approximate faiss index (needs faiss-cpu); auto "
            "picks by size: flat to 100k items, hnsw to 2M, ivfpq beyond",
        )
        parser.add_argument(
            "--faiss-param",
            action="append",
            default=[],
            metavar="NAME=INT",
            help="hnsw: M, ef_construction, ef_search; ivfpq: nlist, pq_m, nprobe",
        )
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    dedup = actions.add_parser(
        "dedup",
        help="near-duplicate groups of an index, as a table",
        description="Groups items whose embeddings have cosine "
        "similarity >= --threshold (linked through neighbours) and writes "
        "one row per item of every group: group, row, key, url, score.",
    )
    dedup.add_argument("index", help="index directory")
    dedup.add_argument(
        "--threshold",
        type=float,
        required=True,
        help="cosine similarity, e.g. 0.95 for near-identical images",
    )
    dedup.add_argument("--out", default="", help="table path (default: INDEX/duplicates.tsv)")
    dedup.add_argument(
        "-k",
        "--k",
        type=int,
        default=16,
        help="neighbours looked at per item (default: %(default)s)",
    )
    info = actions.add_parser("info", help="rows, units, skip counts and backends of an index")
    info.add_argument("index", help="index directory")

    search = sub.add_parser(
        "search",
        help="query an index by text or by image",
        description="Print the top -k items of an index for a text query "
        "or, with --image, for an image (image-to-image search).",
    )
    search.add_argument("index", help="index directory")
    search.add_argument("query", nargs="?", default="", help="the text to search for")
    search.add_argument("--image", default="", help="search by this image file instead")
    search.add_argument("-k", "--k", type=int, default=10, help="results (default: %(default)s)")
    search.add_argument("--json", action="store_true", help="print the records as JSON")
    search.add_argument(
        "--sheet", default="", help="also draw the hits with their scores into this PNG"
    )
    search.add_argument("--backend", default="auto", choices=["auto", "exact", "faiss"])
    add_reading_flags(search)
    search.add_argument(
        "--checkpoint", default="", help="the index's checkpoint, if it moved since the build"
    )

    serve = sub.add_parser(
        "serve",
        help="a web page to search an index",
        description="Serve a search page: a query box, a grid of the top "
        "results (click one to search by it), and image upload.",
    )
    serve.add_argument("index", help="index directory")
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default: %(default)s, this machine only)",
    )
    serve.add_argument("--port", type=int, default=8000, help="default: %(default)s")
    serve.add_argument(
        "-k", "--k", type=int, default=24, help="results per query (default: %(default)s)"
    )
    serve.add_argument("--backend", default="auto", choices=["auto", "exact", "faiss"])
    add_reading_flags(serve)
    serve.add_argument(
        "--checkpoint", default="", help="the index's checkpoint, if it moved since the build"
    )
    serve.add_argument(
        "--max-upload-pixels",
        type=int,
        default=MAX_UPLOAD_PIXELS,
        help="uploaded images above this many pixels are refused from their header, before "
        "decoding (default: %(default)s, a 12-megapixel photo passes)",
    )


def add_reading_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of the commands that read an index's images (search, serve)."""
    parser.add_argument(
        "--allow-download",
        action="store_true",
        help="let an index fetch its images from another machine (shards at https://, s3://, "
        "gs://, ... URLs, or a Hugging Face hub dataset), and a checkpoint that names a hub "
        "model fetch its config",
    )
    add_allow_pipe(parser)


def add_allow_pipe(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow-pipe",
        action="store_true",
        help="let the index read its images through the pipe: shell commands it was built "
        "from; without it an index holding any is refused, as one from someone else could run "
        "anything (a build given the same pipe: --data needs no flag)",
    )


def _specs(args):
    from vlcontrast.search.units import SourceSpec

    return [
        SourceSpec(
            data, args.format, args.split, args.image_field, args.caption_field, args.label_field
        )
        for data in args.data
    ]


def _faiss_params(pairs: list[str]) -> dict[str, int]:
    params = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not value.strip().lstrip("-").isdigit():
            raise ValueError(f"--faiss-param: expected NAME=INT, got {pair!r}")
        params[name.strip()] = int(value)
    return params


def cmd_index(args: argparse.Namespace) -> int:
    try:
        return _index(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"vlcontrast index: {err}", file=sys.stderr)
        return 2


def _index(args: argparse.Namespace) -> int:
    if args.action == "info":
        return _info(args.index)
    if args.action == "dedup":
        from vlcontrast.search.dedup import dedup_index

        report = dedup_index(args.index, args.threshold, args.out or None, args.k)
        print(
            f"{report['groups']} group(s) of near-duplicates ({report['items']} items; "
            f"{report['removable']} could go) at similarity >= {args.threshold}"
        )
        print(f"table: {report['table']}")
        return 0
    from accelerate import PartialState

    from vlcontrast.search.build import BuildOptions, build_index

    state = PartialState()  # a process group under torchrun; one process otherwise
    options = BuildOptions(
        dtype=getattr(args, "dtype", "float16"),
        batch_size=args.batch_size,
        num_workers=args.workers,
        faiss=args.faiss,
        faiss_params=_faiss_params(args.faiss_param),
        overwrite=getattr(args, "overwrite", False),
        allow_download=getattr(args, "allow_download", False),
        allow_pipe=args.allow_pipe,
        progress=not args.no_progress,
        device=state.device,
    )
    add = args.action == "add"
    out = args.index if add else args.out
    checkpoint = None if add else args.checkpoint
    summary = build_index(out, _specs(args), checkpoint, options, add=add)
    if state.is_main_process:
        print_summary(summary)
    return 0


def print_summary(summary: dict) -> None:
    skipped = ", ".join(f"{k} {v}" for k, v in sorted(summary["skipped"].items())) or "none"
    print(
        f"index {summary['index']}: {summary['rows']} items in {summary['units']} unit(s); "
        f"embedded {summary['embedded_now']} now ({summary['images_per_s']:.0f} images/s); "
        f"skipped: {skipped}"
    )
    if summary["pending_units"]:
        print(f"  {summary['pending_units']} unit(s) not done: run the same command to resume")
    if "faiss" in summary:
        f = summary["faiss"]
        print(
            f"  faiss {f['kind']} {f['params']}: built in {f['build_s']:.1f} s, "
            f"recall@10 vs exact {f['recall_at_10']:.3f}"
        )
    if summary.get("text_queries", True):
        print(f'  search: vlcontrast search {summary["index"]} "a photo of a dog"')
    else:  # an image-only model (an SSL run, an imported backbone): images find images
        print(f"  search: vlcontrast search {summary['index']} --image QUERY.jpg")
    print(f"  serve:  vlcontrast serve {summary['index']}")


def _info(index_dir: str) -> int:
    from vlcontrast.search.layout import IndexFiles

    files = IndexFiles.open(index_dir)
    manifest = files.manifest
    print(
        f"{index_dir}: {len(files)} items, dim {files.dim} ({manifest['dtype']}), "
        f"{len(files.units)} unit(s) done, {len(files.pending)} pending"
    )
    print(f"  checkpoint: {manifest['checkpoint']}")
    for source in manifest["sources"]:
        print(f"  source: {source['data']} ({source['format']})")
    print(f"  skipped: {dict(files.skipped) or 'none'}")
    faiss = Path(index_dir) / "faiss.json"
    if faiss.is_file():
        try:
            info = json.loads(faiss.read_text())
            current = "current" if info["rows"] == len(files) else "stale: rebuilt by the next add"
            print(
                f"  faiss: {info['kind']} {info['params']}, "
                f"recall@10 {float(info['recall_at_10']):.3f} ({current})"
            )
        except (ValueError, KeyError, TypeError):
            print(
                "  faiss: faiss.json is not readable; rebuild with 'vlcontrast index build --faiss'"
            )
    return 0


def open_index(args: argparse.Namespace):
    from vlcontrast.search.engine import SearchIndex

    index = SearchIndex(
        args.index,
        backend=args.backend,
        checkpoint=args.checkpoint or None,
        allow_download=args.allow_download,
        allow_pipe=args.allow_pipe,
    )
    if index.files.pending:
        print(
            f"note: {len(index.files.pending)} unit(s) of {args.index} are not built yet; "
            f"searching the {len(index)} items that are (rerun 'index build' to finish)",
            file=sys.stderr,
        )
    return index


def cmd_search(args: argparse.Namespace) -> int:
    from vlcontrast.search.engine import QueryError

    try:
        index = open_index(args)
        if args.image:
            if not Path(args.image).is_file():
                raise QueryError(f"--image: no file {args.image}")
            hits = index.search_image(args.image, args.k)
        else:
            hits = index.search_text(args.query, args.k)
    except (ValueError, FileNotFoundError) as err:
        print(f"vlcontrast search: {err}", file=sys.stderr)
        return 2
    if args.sheet:
        from vlcontrast.search.sheet import hits_sheet

        left_out = hits_sheet(args.query or Path(args.image).name, hits, index, args.sheet)
        if left_out:
            print(
                f"note: {len(left_out)} of the {len(hits)} hits are not drawn in {args.sheet}; "
                f"hit {left_out[0]}",
                file=sys.stderr,
            )
    if args.json:
        print(json.dumps(hits, ensure_ascii=False))
        return 0
    what = f"image {args.image}" if args.image else repr(args.query)
    print(f"top {len(hits)} of {len(index)} items for {what}:")
    print(f"{'rank':>4}  {'score':>6}  key  caption")
    for hit in hits:
        caption = f"  {hit['caption']}" if hit.get("caption") else ""
        print(f"{hit['rank'] + 1:>4}  {hit['score']:.4f}  {hit['key']}{caption}")
    if args.sheet:
        print(f"hits drawn in {args.sheet}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from vlcontrast.search.server import serve

    try:
        index = open_index(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"vlcontrast serve: {err}", file=sys.stderr)
        return 2
    serve(index, args.host, args.port, args.k, args.max_upload_pixels)
    return 0
