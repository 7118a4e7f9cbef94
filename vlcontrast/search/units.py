"""The units a collection is indexed in, and reading an item's image back from its source.

A unit is one tar shard, or a run of :data:`CHUNK` items of an ImageFolder tree or a Hugging Face
dataset. Units are what an index build embeds, writes, resumes and adds: a unit is either done
(its files are complete) or embedded again, and ``index add`` appends the units of new shards.
Each record remembers where its image lives (the shard URL plus the byte offset and size of the
image member in the tar, or the file path, or the dataset row), so the web page reads one image
back with one seek instead of unpacking the collection.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vlcontrast.data.captions import member_value, parse_captions
from vlcontrast.data.collection import (
    HFSource,
    ImageFolderSource,
    ShardSource,
    detect_format,
)
from vlcontrast.data.skip import SkipSample
from vlcontrast.data.tar_reader import iter_samples, read_member

CHUNK = 4096  # items per unit of an indexable source (ImageFolder, HF): a resumable step


@dataclass
class SourceSpec:
    """One collection added to an index: what ``--data`` and its field flags said."""

    data: str
    format: str = "auto"  # auto | wds | imagefolder | hf
    split: str = "train"  # HF datasets
    image_field: str = ""  # wds: extensions (jpg;png); HF: column (default image)
    caption_field: str = ""  # wds: txt or json.FIELD; HF: column (default caption)
    label_field: str = ""  # wds: cls; HF: label

    def __post_init__(self):
        if self.format == "auto":
            self.format = detect_format(self.data)
        if self.format not in ("wds", "imagefolder", "hf"):
            raise ValueError(f"format: unknown format {self.format!r}; use wds, imagefolder or hf")

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass
class Unit:
    name: str  # the file stem of the unit's files in the index (u000000)
    source: int  # index into the manifest's sources
    url: str  # the shard's URL; the folder or dataset for indexable sources
    start: int = 0  # item range [start, stop) of an indexable source
    stop: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def open_collection(spec: SourceSpec):
    """The source object of ``spec`` (``data.collection``), with its fields resolved."""
    if spec.format == "imagefolder":
        return ImageFolderSource(spec.data)
    if spec.format == "hf":
        return HFSource(
            spec.data, spec.split, spec.image_field, spec.label_field, spec.caption_field
        )
    return ShardSource(spec.data, spec.image_field, spec.label_field, spec.caption_field)


def plan_units(spec: SourceSpec, source_index: int, first: int, skip_urls: set[str]) -> list[Unit]:
    """The units of ``spec``, named from ``first`` on; shards in ``skip_urls`` (already in the
    index) are left out."""
    collection = open_collection(spec)
    units: list[Unit] = []

    def add(url: str, start: int = 0, stop: int = 0) -> None:
        units.append(Unit(f"u{first + len(units):06d}", source_index, url, start, stop))

    if isinstance(collection, ShardSource):
        for url in collection.urls:
            if url not in skip_urls:
                add(url)
        return units
    if spec.data in skip_urls:
        return units
    for start in range(0, len(collection), CHUNK):
        add(spec.data, start, min(start + CHUNK, len(collection)))
    return units


def unit_records(collection, unit: Unit, errors: Counter) -> Iterator[dict[str, Any]]:
    """The raw records of ``unit``: ``{"key", "image" (bytes or None), "caption", "label",
    "where"}``; ``where`` is how :func:`read_image` finds the image again. A truncated or
    unreadable shard is counted in ``errors``."""
    if isinstance(collection, ShardSource):
        for raw in iter_samples(unit.url, lambda reason: errors.update([reason]), offsets=True):
            ext = next((k for k in collection.image_keys if k in raw), None)
            offset, size = raw["__offsets__"][ext] if ext else (-1, 0)
            yield {
                "key": raw["__key__"],
                "image": raw[ext] if ext else None,
                "caption": _optional(member_value, raw, collection.caption_field),
                "label": _optional(member_value, raw, collection.label_field, "label"),
                "where": {"ext": ext, "offset": offset, "size": size},
            }
        return
    if isinstance(collection, ImageFolderSource):
        for index in range(unit.start, unit.stop):
            path, label = collection.items[index]
            relative = str(path.relative_to(collection.root))
            image = _read(path)
            yield {
                "key": relative,
                "image": image,
                "caption": None,
                "label": label,
                "where": {"path": relative, "size": len(image or b"")},
            }
        return
    for index, record in _hf_rows(collection, unit.start, unit.stop):
        yield {**record, "where": {"row": index}}


def _hf_rows(collection: HFSource, start: int, stop: int) -> Iterator[tuple[int, dict[str, Any]]]:
    columns = collection.data.column_names
    for index in range(start, stop):
        row = collection.data[index]
        image = row[collection.image_field]
        if isinstance(image, dict):  # datasets.Image(decode=False): {"bytes", "path"}
            image = image.get("bytes") or _read(image.get("path"))
        caption = row.get(collection.caption_field) if collection.caption_field in columns else None
        label = row.get(collection.label_field) if collection.label_field in columns else None
        yield index, {"key": str(index), "image": image, "caption": caption, "label": label}


def first_caption(value: Any) -> str | None:
    """The first caption of a caption value, or None when there is none."""
    try:
        return parse_captions(value)[0] if value is not None else None
    except SkipSample:
        return None


def label_of(value: Any) -> int | None:
    try:
        return int(json.loads(value)) if isinstance(value, str | bytes) else int(value)
    except (TypeError, ValueError):
        return None


def read_image(collection_or_spec, unit: Unit | dict, where: dict[str, Any]) -> bytes:
    """The image bytes of an indexed item, exactly as stored in its source."""
    url = unit["url"] if isinstance(unit, dict) else unit.url
    if "offset" in where:
        if where["offset"] < 0:
            raise OSError("this item has no image member")
        return read_member(url, where["offset"], where["size"])
    if "path" in where:
        return (Path(url) / where["path"]).read_bytes()
    collection = collection_or_spec
    if isinstance(collection, SourceSpec):
        collection = open_collection(collection)
    (_, record), *_ = _hf_rows(collection, where["row"], where["row"] + 1)
    if record["image"] is None:
        raise OSError("this item has no image")
    if not isinstance(record["image"], bytes):  # a dataset of decoded images: re-encode
        import io

        buffer = io.BytesIO()
        record["image"].save(buffer, format="PNG")
        return buffer.getvalue()
    return record["image"]


def _optional(read, *args) -> Any:
    try:
        return read(*args)
    except SkipSample:
        return None


def _read(path) -> bytes | None:
    try:
        return Path(path).read_bytes() if path else None
    except OSError:
        return None  # counted as missing_image
