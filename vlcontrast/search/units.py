"""The units a collection is indexed in, and reading an item's image back from its source.

A unit is one tar shard, or a run of :data:`CHUNK` items of an ImageFolder tree or a Hugging Face
dataset. Units are what an index build embeds, writes, resumes and adds: a unit is either done
(its files are complete) or embedded again, and ``index add`` appends the units of new shards.
Each record remembers where its image lives (the shard URL plus the byte offset and size of the
image member in the tar, or the file path, or the dataset row), so the web page reads one image
back with one seek instead of unpacking the collection.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from vlcontrast.data.captions import parse_captions, parse_label
from vlcontrast.data.collection import FORMATS, detect_format, open_source
from vlcontrast.data.skip import SkipSample

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
    return open_source(spec, spec.data, spec.split)


def plan_units(spec: SourceSpec, source_index: int, first: int, skip_urls: set[str]) -> list[Unit]:
    """The units of ``spec``, named from ``first`` on: its shards, or runs of :data:`CHUNK`
    items; shards (or a whole collection) in ``skip_urls`` (already in the index) are left
    out."""
    units: list[Unit] = []
    for url, start, stop in open_collection(spec).spans(CHUNK):
        url = url or spec.data
        if url not in skip_urls:
            units.append(Unit(f"u{first + len(units):06d}", source_index, url, start, stop))
    return units


def unit_records(collection, unit: Unit, errors: Counter) -> Iterator[dict[str, Any]]:
    """The raw records of ``unit`` (``data.collection``: ``key``, ``image`` bytes or None,
    ``captions``, ``label``, and ``where``, which :func:`read_image` reads the image back
    from); a truncated or unreadable shard is counted in ``errors``."""
    return collection.span_records(unit.url, unit.start, unit.stop, errors)


def first_caption(value: Any) -> str | None:
    """The first caption of a caption value, or None when there is none (or it is bad)."""
    try:
        return parse_captions(value() if callable(value) else value)[0]
    except SkipSample:
        return None


def label_of(value: Any) -> int | None:
    """The class index of a label value, or None when there is none (or it is bad)."""
    try:
        return parse_label(value() if callable(value) else value)
    except SkipSample:
        return None


def read_image(collection_or_spec, unit: Unit | dict, where: dict[str, Any]) -> bytes:
    """The image bytes of an indexed item, exactly as stored in its source: one seek in a shard
    or one file read, without opening the collection; a dataset row through the dataset."""
    url = unit["url"] if isinstance(unit, dict) else unit.url
    source = collection_or_spec
    if isinstance(source, SourceSpec):
        if source.format != "hf":
            return FORMATS[source.format].read_at(url, where)
        source = open_collection(source)
    return source.read_at(url, where)
