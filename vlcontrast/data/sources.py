"""Shard sources: URL patterns, per-source sampling weights, and the dataset's size.

``data.train_shards`` holds one or more brace-expandable patterns joined by ``::``
(``laion/{00000..41407}.tar::cc12m/{00000..01242}.tar``); ``data.weights`` gives each source's
share of the samples in resampled mode (``[2, 1]``: two thirds from the first). A weight is a
source's share, not a per-shard factor as in OpenCLIP's ``--train-data-upsampling-factors``, so a
source's share does not change when its shard count does.

The size of the dataset (for epoch counting in resampled mode and for the start-of-run report) is
taken, in order, from ``data.num_samples``, ``sizes.json`` beside the shards (webdataset and
OpenCLIP convention), img2dataset's ``{shard}_stats.json`` files, or by counting the shards once;
a count is cached under ``~/.cache/vlcontrast`` keyed by the URL list.
"""

from __future__ import annotations

import glob
import hashlib
import itertools
import json
import os
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import webdataset as wds
from tqdm.auto import tqdm

from vlcontrast.data.limits import IMAGE_SUFFIXES
from vlcontrast.data.tar_reader import count_samples


@dataclass
class Source:
    pattern: str
    urls: list[str]
    weight: float = 1.0


def expand_urls(pattern: str) -> list[str]:
    """All shard URLs of a ``::``-joined list of brace patterns, in order."""
    return [url for source in parse_sources(pattern) for url in source.urls]


def is_local(url: str) -> bool:
    return "://" not in url and not url.startswith("pipe:")


def expand_local(url: str) -> list[str]:
    """A local glob (``shards/*.tar``, as a shell would expand it, sorted) or a directory (its
    ``*.tar``, ``*.tar.gz``, ... files, sorted); anything else as it is."""
    if not is_local(url):
        return [url]
    if Path(url).is_dir():
        found = sorted(str(p) for p in Path(url).iterdir() if ".tar" in p.suffixes)
        return found
    if any(char in url for char in "*?["):
        return sorted(glob.glob(url))
    return [url]


def missing_shards(urls: list[str]) -> list[str]:
    """The local URLs that do not exist (remote ones are not probed)."""
    return [url for url in urls if is_local(url) and not Path(url).exists()]


def parse_sources(pattern: str, weights: Sequence[float] = ()) -> list[Source]:
    """``a/{0..9}.tar::b/{0..4}.tar`` + weights -> one :class:`Source` per pattern."""
    patterns = [part.strip() for part in pattern.split("::") if part.strip()]
    if weights and len(weights) != len(patterns):
        raise ValueError(
            f"data.weights: {len(weights)} weight(s) for {len(patterns)} source(s) in "
            f"data.train_shards; give one weight per '::'-separated pattern"
        )
    if any(float(w) < 0 for w in weights) or (weights and not sum(map(float, weights))):
        raise ValueError("data.weights: weights must be >= 0 and not all zero")
    sources = []
    for index, part in enumerate(patterns):
        urls = [url for braced in wds.shardlists.expand_urls(part) for url in expand_local(braced)]
        if not urls:
            raise ValueError(f"data.train_shards: pattern {part!r} matches no shard{hint(part)}")
        sources.append(Source(part, urls, float(weights[index]) if weights else 1.0))
    return sources


def hint(pattern: str) -> str:
    """What to do when ``pattern`` is a folder of images rather than of shards."""
    folder = Path(pattern)
    if not is_local(pattern) or not folder.is_dir():
        return ""
    if any(p.suffix.lower() in IMAGE_SUFFIXES for p in itertools.islice(folder.rglob("*"), 10000)):
        return (
            f"; {pattern} holds images, not shards: write them as shards with 'vlcontrast data "
            f"images {pattern} --out SHARDS' (or 'data imagefolder' for class folders, 'data "
            f"captions' with a captions table)"
        )
    return ""


def _read_json(url: str) -> dict | None:
    try:
        with wds.gopen(url, "rb") as stream:
            return json.loads(stream.read())
    except Exception:  # noqa: BLE001 - absent or unreadable metadata: try the next way
        return None


def _sizes_json(urls: list[str]) -> int | None:
    by_dir: dict[str, list[str]] = {}
    for url in urls:
        by_dir.setdefault(posixpath.dirname(url), []).append(posixpath.basename(url))
    total = 0
    for directory, names in by_dir.items():
        sizes = _read_json(posixpath.join(directory, "sizes.json") if directory else "sizes.json")
        if not isinstance(sizes, dict) or any(name not in sizes for name in names):
            return None
        total += sum(int(sizes[name]) for name in names)
    return total


def _stats_json(urls: list[str]) -> int | None:
    total = 0
    for url in urls:
        stem = url[: -len(".tar")] if url.endswith(".tar") else None
        stats = _read_json(f"{stem}_stats.json") if stem else None
        if not isinstance(stats, dict) or "successes" not in stats:
            return None
        total += int(stats["successes"])
    return total


def cache_dir() -> Path:
    root = os.environ.get("VLCONTRAST_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "vlcontrast"
    )
    return Path(root)


def known_size(urls: list[str]) -> int | None:
    """The sample count from ``sizes.json`` or ``_stats.json`` metadata, without counting."""
    for read in (_sizes_json, _stats_json):
        size = read(urls)
        if size is not None:
            return size
    return None


def dataset_size(urls: list[str], num_samples: int = 0, progress: bool = True) -> tuple[int, str]:
    """(number of samples, where the number came from)."""
    if num_samples > 0:
        return num_samples, "data.num_samples"
    for how, read in (("sizes.json", _sizes_json), ("_stats.json", _stats_json)):
        size = read(urls)
        if size is not None:
            return size, how
    digest = hashlib.sha1("\n".join(urls).encode()).hexdigest()[:16]
    cached = cache_dir() / f"sizes-{digest}.json"
    if cached.is_file():
        return int(json.loads(cached.read_text())["samples"]), f"cached count ({cached})"
    bar = tqdm(urls, desc="counting samples", unit="shard", disable=not progress)
    total = sum(count_samples(url) for url in bar)
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"samples": total, "shards": len(urls)}) + "\n")
    os.replace(tmp, cached)
    return total, "counted once (cached)"
