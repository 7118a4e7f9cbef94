"""Build img2dataset-layout shards from common sources (what ``data_scripts/`` wraps).

Sources, each an indexable list of records (``key``, image bytes or path, caption(s), metadata):

* :class:`CaptionTable`: an image folder plus a captions table (CSV, TSV, JSONL or parquet) with
  configurable image-path and caption columns; other columns go to the sample's JSON. Labels
  come from a label column (``label`` when the table has one) or from each image's folder name
  (``--label-from-folder``); they are written as ``cls`` with the sorted class names in
  ``classes.json``, as for an ImageFolder, so the shards serve kNN and zero-shot evaluation.
* :class:`ClassFolder`: an ImageFolder tree (``root/CLASS/IMAGE``); the caption is a template
  (``"a photo of a {}."``) filled with the class name, picked per image with a seeded generator;
  the label is also written as ``cls`` and the class names as ``classes.json``, so the shards
  serve zero-shot evaluation too.
* :class:`ImageFiles`: every image under a folder, at any depth, without captions or labels
  (``{key}.jpg`` and ``{key}.json`` only), for the image-only methods.
* :class:`HFImageText`: a Hugging Face ``datasets`` dataset (a ``save_to_disk`` directory, a
  local dataset folder or a hub name) with an image and a text column (a list of captions is kept
  whole in the JSON, its first caption in ``txt``).

:func:`build_shards` writes shard ``i`` from records ``[i*N, (i+1)*N)`` (so the result does not
depend on the worker count) as ``{i:05d}.tar`` with ``{key}.jpg|png|webp``, ``{key}.txt`` and
``{key}.json``, plus img2dataset's ``{i:05d}_stats.json`` and a ``sizes.json``. Images are checked
by decoding them; optional ``resize`` shrinks the shorter side to that many pixels (JPEG q95).
Shards are written to a temporary name and renamed; the stats file, written last, marks a shard
done, so a rerun skips finished shards and redoes the rest. Skipped records are counted by reason.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import random
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm.auto import tqdm

from vlcontrast.data.captions import parse_captions
from vlcontrast.data.image import IMAGE_SUFFIXES, MAX_PIXELS, read_image_file, to_rgb
from vlcontrast.data.shard_writer import add_member
from vlcontrast.data.skip import SkipSample

KEEP_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}  # written as they are


def scan_class_folder(
    root: str | Path, flat_ok: bool = False
) -> tuple[list[str], list[tuple[Path, int | None]]]:
    """torchvision's ImageFolder layout (``root/CLASS/IMAGE``): the sorted class folder names
    and the (image path, label) pairs, label = folder index. With ``flat_ok``, a folder that
    holds its images directly (no class folders) gives no classes and unlabelled images."""
    root = Path(root)
    if flat_ok and not any(p.is_dir() for p in root.iterdir()):
        flat = [p for p in sorted(root.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
        if flat:
            return [], [(path, None) for path in flat]
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    items = [
        (path, label)
        for label, name in enumerate(classes)
        for path in sorted((root / name).rglob("*"))
        if path.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not items:
        raise ValueError(
            f"{root}: no images in class sub-folders (root/CLASS/IMAGE.jpg); for images "
            f"without labels, 'vlcontrast data images {root} --out SHARDS'"
        )
    return classes, items


def class_names(folders: list[str]) -> list[str]:
    """Display names of class folders (``golden_retriever`` -> ``golden retriever``)."""
    return [name.replace("_", " ") for name in folders]


def read_table(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a CSV, TSV, JSONL or parquet file, as dicts."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if suffix in (".jsonl", ".json"):
        lines = path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]
    if suffix in (".csv", ".tsv"):
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ","))
    raise ValueError(f"{path}: unknown table format {suffix!r}; use .csv, .tsv, .jsonl or .parquet")


@dataclass
class CaptionTable:
    images: str  # the folder the image paths are relative to
    table: str
    image_column: str = "image"
    caption_column: str = "caption"
    label_column: str | None = None  # None: "label" if the table has it; "": no labels
    label_from_folder: bool = False  # the label is the image's folder name
    rows: list = field(default_factory=list, repr=False)
    classes: list | None = None

    def __post_init__(self):
        self.rows = read_table(self.table)
        if self.label_column is None:
            has_label = bool(self.rows) and "label" in self.rows[0]
            self.label_column = "label" if has_label and not self.label_from_folder else ""
        checks = [(self.image_column, "--image-column"), (self.caption_column, "--caption-column")]
        if self.label_column:
            checks.append((self.label_column, "--label-column"))
        for column, flag in checks:
            if self.rows and column not in self.rows[0]:
                raise ValueError(
                    f"{self.table}: no column {column!r} (columns: {list(self.rows[0])}); "
                    f"set {flag}"
                )
        if self.label_column or self.label_from_folder:
            self.classes = sorted({self._label_name(row) for row in self.rows})
            self._ids = {name: i for i, name in enumerate(self.classes)}

    def identity(self):
        """What these shards are made of (:func:`fingerprint`)."""
        columns = (self.image_column, self.caption_column, self.label_column)
        yield from (str(Path(self.images).resolve()), columns, self.label_from_folder)
        yield from self.rows

    def _label_name(self, row: dict[str, Any]) -> str:
        if self.label_from_folder:
            return Path(str(row[self.image_column])).parent.name or Path(self.images).name
        return str(row[self.label_column])

    def __len__(self) -> int:
        return len(self.rows)

    def record(self, index: int) -> dict[str, Any]:
        row = self.rows[index]
        path = Path(self.images) / str(row[self.image_column])
        image = read_image_file(path)
        extra = {k: v for k, v in row.items() if k not in (self.image_column, self.caption_column)}
        record = {
            "image": image,
            "caption": row.get(self.caption_column),
            "meta": {"path": str(row[self.image_column]), **extra},
        }
        if self.classes is not None:
            name = self._label_name(row)
            record["label"] = self._ids[name]
            record["meta"].update(label=record["label"], classname=name)
        return record


@dataclass
class ClassFolder:
    root: str
    templates: Sequence[str] = ("a photo of a {}.",)
    seed: int = 0
    classes: list = field(default_factory=list)
    items: list = field(default_factory=list, repr=False)
    loose: int = 0  # images directly under root, in no class folder: not written

    def __post_init__(self):
        if any("{}" not in t for t in self.templates):
            raise ValueError("--templates: every template needs a {} for the class name")
        folders, items = scan_class_folder(self.root)
        # images beside the class folders have no class: left out (as torchvision's), counted
        self.loose = sum(1 for p in Path(self.root).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        self.classes = class_names(folders)
        self.items = [(str(path.relative_to(self.root)), label) for path, label in items]

    def __len__(self) -> int:
        return len(self.items)

    def identity(self):
        """What these shards are made of (:func:`fingerprint`)."""
        yield from (str(Path(self.root).resolve()), list(self.templates), self.seed)
        yield from self.items

    def record(self, index: int) -> dict[str, Any]:
        relative, label = self.items[index]
        name = self.classes[label]
        template = random.Random(f"{self.seed}/{relative}").choice(list(self.templates))
        return {
            "image": read_image_file(Path(self.root) / relative),
            "caption": template.format(name),
            "label": label,
            "meta": {"path": relative, "label": label, "classname": name},
        }


@dataclass
class ImageFiles:
    """Every image under ``root``, at any depth, in the order of their paths: no captions and
    no labels, for the image-only methods (a folder of unlabelled photos, as lightly's
    ``LightlyDataset(input_dir)`` takes). Each sample's JSON keeps its path."""

    root: str
    items: list = field(default_factory=list, repr=False)

    def __post_init__(self):
        root = Path(self.root)
        if not root.is_dir():
            raise ValueError(f"{root}: no such folder")
        self.items = sorted(
            str(path.relative_to(root))
            for path in root.rglob("*")
            # all but folders: a broken link or a device is skipped and counted, not lost unseen
            if path.suffix.lower() in IMAGE_SUFFIXES and not path.is_dir()
        )
        if not self.items:
            suffixes = Counter(p.suffix.lower() or p.name for p in root.rglob("*") if p.is_file())
            held = ", ".join(f"{n} {s}" for s, n in suffixes.most_common(3)) or "nothing"
            raise ValueError(
                f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) in it; it holds {held}"
            )

    def __len__(self) -> int:
        return len(self.items)

    def identity(self):
        """What these shards are made of (:func:`fingerprint`)."""
        yield str(Path(self.root).resolve())
        yield from self.items

    def record(self, index: int) -> dict[str, Any]:
        relative = self.items[index]
        return {"image": read_image_file(Path(self.root) / relative), "meta": {"path": relative}}


@dataclass
class HFImageText:
    name: str  # save_to_disk directory, dataset folder or hub name
    split: str = "train"
    image_column: str = "image"
    text_column: str = "text"

    def __post_init__(self):
        self._data = None
        data = self.data
        for column in (self.image_column, self.text_column):
            if column not in data.column_names:
                raise ValueError(
                    f"{self.name}: no column {column!r} (columns: {data.column_names}); "
                    f"set --image-column/--text-column"
                )

    def identity(self):
        """What these shards are made of (:func:`fingerprint`): the dataset's own fingerprint."""
        yield from (self.name, self.split, self.image_column, self.text_column)
        yield getattr(self.data, "_fingerprint", len(self.data))

    @property
    def data(self):
        """Opened lazily in each worker process (memory-mapped Arrow files, cheap to reopen)."""
        if self._data is None:
            import datasets

            path = Path(self.name)
            if (
                path.is_dir()
                and (path / "dataset_info.json").exists()
                or (path / "dataset_dict.json").exists()
            ):
                data = datasets.load_from_disk(str(path))
                data = data[self.split] if isinstance(data, datasets.DatasetDict) else data
            else:
                data = datasets.load_dataset(self.name, split=self.split)
            if isinstance(data.features.get(self.image_column), datasets.Image):
                data = data.cast_column(self.image_column, datasets.Image(decode=False))
            self._data = data
        return self._data

    def __getstate__(self):
        return {**self.__dict__, "_data": None}

    def __len__(self) -> int:
        return len(self.data)

    def record(self, index: int) -> dict[str, Any]:
        row = self.data[index]
        image = row[self.image_column]
        if isinstance(image, dict):  # datasets.Image(decode=False): {"bytes", "path"}
            data, path = image.get("bytes"), image.get("path")
            # a stranger's dataset may name any path: read only a regular file
            image = read_image_file(path) if data is None and path else data
        elif isinstance(image, Image.Image):
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            image = buffer.getvalue()
        if image is None:
            raise SkipSample("missing_image")
        # A present but empty file is a corrupt image everywhere (encode_image counts it).
        extra = {k: v for k, v in row.items() if k not in (self.image_column, self.text_column)}
        extra = {k: v for k, v in extra.items() if isinstance(v, (str, int, float, bool, list))}
        return {"image": image, "caption": row[self.text_column], "meta": {"index": index, **extra}}


def encode_image(data: bytes, resize: int) -> tuple[str, bytes, dict[str, int]]:
    """(extension, bytes, sizes): checked by a full decode; re-encoded only when resized or in a
    format the loader does not read. Not resized, an image over ``MAX_PIXELS`` is skipped from
    its header (``too_large``), as training would skip it, without decoding it."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            if not resize and img.size[0] * img.size[1] > MAX_PIXELS:
                raise SkipSample("too_large")
            img.load()
            fmt, (width, height) = img.format, img.size
            rgb = None
            if resize and min(width, height) > resize:
                ratio = resize / min(width, height)
                size = (max(1, round(width * ratio)), max(1, round(height * ratio)))
                rgb = to_rgb(img).resize(size, Image.BICUBIC)
            elif fmt not in KEEP_FORMATS:
                rgb = to_rgb(img)
    except SkipSample:
        raise
    except Image.DecompressionBombError:  # PIL's own guard, past twice its pixel limit
        raise SkipSample("too_large") from None
    except Exception:  # noqa: BLE001 - PIL raises many types for corrupt files
        raise SkipSample("corrupt_image") from None
    sizes = {"original_width": width, "original_height": height}
    if rgb is None:
        return KEEP_FORMATS[fmt], data, {**sizes, "width": width, "height": height}
    buffer = io.BytesIO()
    rgb.save(buffer, format="JPEG", quality=95)
    return "jpg", buffer.getvalue(), {**sizes, "width": rgb.width, "height": rgb.height}


def write_shard(source, index: int, per_shard: int, out_dir: str, resize: int) -> dict[str, Any]:
    """Shard ``index`` of ``source``; returns its stats (img2dataset's ``_stats.json`` fields
    plus our skip reasons)."""
    import tarfile

    out = Path(out_dir)
    name, stats_path = f"{index:05d}.tar", out / f"{index:05d}_stats.json"
    tmp = out / f".{name}.tmp{os.getpid()}"
    skipped: Counter = Counter()
    start, stop = index * per_shard, min(len(source), (index + 1) * per_shard)
    successes, digits = 0, max(4, len(str(per_shard - 1)))  # keys as img2dataset makes them
    with tarfile.open(tmp, "w") as tar:
        for position in range(start, stop):
            key = f"{index:05d}{position - start:0{digits}d}"
            try:
                record = source.record(position)
                # a source without captions (ImageFiles) writes image-only samples
                captions = parse_captions(record["caption"]) if "caption" in record else []
                ext, payload, sizes = encode_image(record["image"], resize)
            except SkipSample as skip:
                skipped[skip.reason] += 1
                continue
            except OSError:
                skipped["unreadable_image"] += 1
                continue
            first = {"caption": captions[0]} if captions else {}
            meta = {"key": key, **first, **sizes, **record.get("meta", {})}
            if len(captions) > 1:
                meta["captions"] = captions
            add_member(tar, f"{key}.{ext}", payload)
            if captions:
                add_member(tar, f"{key}.txt", captions[0].encode())
            add_member(tar, f"{key}.json", json.dumps(meta, default=str).encode())
            if "label" in record:
                add_member(tar, f"{key}.cls", str(record["label"]).encode())
            successes += 1
    os.replace(tmp, out / name)
    stats = {
        "count": stop - start,
        "successes": successes,
        "failed_to_download": 0,
        "failed_to_resize": sum(skipped.values()),
        "skipped": dict(skipped),
    }
    stats_path.write_text(json.dumps(stats, indent=1) + "\n")  # last: marks the shard done
    return stats


MANIFEST = "vlcontrast_source.json"  # what a folder's shards were made from (build_shards)


def fingerprint(source) -> str:
    """A digest of what ``source``'s shards are made of: its kind, its ``identity()`` (paths,
    table rows, a dataset's own fingerprint) and its number of records."""
    digest = hashlib.sha256(f"{type(source).__name__}/{len(source)}".encode())
    for part in source.identity():
        digest.update(json.dumps(part, default=str, sort_keys=True).encode() + b"\n")
    return digest.hexdigest()[:16]


class OtherSource(ValueError):
    """An output folder whose finished shards came from another source or settings."""


def check_manifest(out: Path, manifest: dict[str, Any]) -> None:
    """Refuse to finish ``out``'s shards from another source or other settings than the
    finished ones were made from (a rerun keeps finished shards): each shard would otherwise
    hold records of one and the next of the other. A folder without a manifest is adopted."""
    path = out / MANIFEST
    if path.is_file():
        before = json.loads(path.read_text())
        changed = [k for k in manifest if before.get(k) != manifest[k]]
        if changed and any(out.glob("*_stats.json")):
            said = ", ".join(f"{k} {before.get(k)!r} -> {manifest[k]!r}" for k in changed)
            raise OtherSource(
                f"{out} holds shards made from another source or with other settings ({said}); "
                f"write to a new --out, or empty {out} to start again"
            )
    path.write_text(json.dumps(manifest, indent=1) + "\n")


def build_shards(
    source,
    out_dir: str | Path,
    per_shard: int = 1000,
    resize: int = 0,
    workers: int = 1,
    progress: bool = True,
) -> dict[str, Any]:
    """Write ``source`` as shards in ``out_dir``; returns a summary (samples, shards written or
    already done, skipped by reason). A rerun finishes the shards of the same source and
    settings and refuses another's (:func:`check_manifest`)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"source": fingerprint(source), "records": len(source)}
    check_manifest(out, manifest | {"per_shard": per_shard, "resize": resize})
    n_shards = -(-len(source) // per_shard)
    done = {i for i in range(n_shards) if _finished(out, i)}
    todo = [i for i in range(n_shards) if i not in done]
    bar = tqdm(total=n_shards, initial=len(done), desc="shards", unit="shard", disable=not progress)
    if workers > 1 and len(todo) > 1:
        # the source goes to each worker once and a task is a shard number: a source's list of
        # paths pickles to 50 MB for ImageNet's 1.28M images, which every task carried before
        with ProcessPoolExecutor(workers, initializer=_hold, initargs=(source,)) as pool:
            futures = [pool.submit(_write_held, i, per_shard, str(out), resize) for i in todo]
            for future in futures:
                future.result()
                bar.update(1)
    else:
        for i in todo:
            write_shard(source, i, per_shard, str(out), resize)
            bar.update(1)
    bar.close()
    classes = getattr(source, "classes", None)
    return summarize(out, n_shards, resumed=len(done), classes=classes)


_HELD: list = []  # a pool worker's source (build_shards)


def _hold(source) -> None:
    _HELD[:] = [source]


def _write_held(index: int, per_shard: int, out_dir: str, resize: int) -> dict[str, Any]:
    return write_shard(_HELD[0], index, per_shard, out_dir, resize)


def _finished(out: Path, index: int) -> bool:
    return (out / f"{index:05d}.tar").is_file() and (out / f"{index:05d}_stats.json").is_file()


def summarize(out: Path, n_shards: int, resumed: int, classes: list | None = None) -> dict:
    sizes, skipped = {}, Counter()
    for i in range(n_shards):
        stats = json.loads((out / f"{i:05d}_stats.json").read_text())
        sizes[f"{i:05d}.tar"] = stats["successes"]
        skipped.update(stats.get("skipped", {}))
    (out / "sizes.json").write_text(json.dumps(sizes, indent=1) + "\n")
    if classes is not None:
        (out / "classes.json").write_text(json.dumps({"classnames": classes}, indent=1) + "\n")
    return {
        "samples": sum(sizes.values()),
        "shards": n_shards,
        "already_done": resumed,
        "skipped": dict(skipped),
        "pattern": str(out / f"{{00000..{n_shards - 1:05d}}}.tar"),
    }


def summary_line(summary: dict[str, Any]) -> str:
    skipped = ", ".join(f"{k}={v}" for k, v in summary["skipped"].items()) or "none"
    return (
        f"{summary['samples']} samples in {summary['shards']} shard(s) "
        f"({summary['already_done']} already done): {summary['pattern']}; skipped: {skipped}"
    )
