"""Image collections to embed: ImageFolder trees, WebDataset shards and Hugging Face datasets,
one interface, for evaluation and search.

source (raw records in a fixed order) -> EvalDataset (this rank's and worker's share, decode,
transform; bad records skipped and counted) -> eval_collate -> batches for ``embed``.
Images go through the training pipeline's own image module (``data.image``), so a file is the
same tensor in training and here; captions through the one caption parser.

Every record carries an ``order`` key (its position in the whole set), so however many ranks
and workers embed it, gathering and sorting by ``order`` gives the single-process result.
Indexable sources (ImageFolder, HF) are split by index; shards are split by shard, so each
stream reads only its own tar files.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from vlcontrast import distributed
from vlcontrast.data.captions import member_value, parse_captions, parse_label
from vlcontrast.data.convert import class_names, scan_class_folder
from vlcontrast.data.image import IMAGE_EXTENSIONS, MAX_PIXELS, decode_image, read_image_file
from vlcontrast.data.skip import SkipSample
from vlcontrast.data.sources import dataset_size, expand_local, expand_urls, missing_shards
from vlcontrast.data.tar_reader import iter_samples, read_member

HF_MARKERS = ("dataset_info.json", "dataset_dict.json", "state.json")
SHARD_ORDER = 1 << 32  # order key of a shard sample: shard index * SHARD_ORDER + position


class IndexedSource:
    """A source read by item index (ImageFolder, HF): ``read(indices, errors)`` yields records;
    a stream takes every ``streams``-th item, an index unit a run of ``chunk`` items."""

    def read(self, indices: range, errors: Counter) -> Iterator[dict[str, Any]]:
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    def records(self, stream: int, streams: int, errors: Counter) -> Iterator[dict[str, Any]]:
        return self.read(range(stream, len(self), streams), errors)

    def spans(self, chunk: int) -> list[tuple[str | None, int, int]]:
        return [(None, s, min(s + chunk, len(self))) for s in range(0, len(self), chunk)]

    def span_records(self, url: str, start: int, stop: int, errors: Counter):
        return self.read(range(start, stop), errors)


class ImageFolderSource(IndexedSource):
    """``root/CLASS/IMAGE`` (torchvision's ImageFolder layout): classes are the sorted folder
    names, label = folder index, caption = none. A folder of images without class folders is
    read too, its images unlabelled (enough to index and search them)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.classes, self.items = scan_class_folder(self.root, flat_ok=True)

    def __len__(self) -> int:
        return len(self.items)

    def classes_and_templates(self) -> tuple[list[str], list[str]]:
        return class_names(self.classes), []

    def use_names(self, names: list[str]) -> None:
        """Label images by ``names`` (a classes file, in any order): each folder is matched to
        the name equal to its folder name or its display name (``golden_retriever`` = ``golden
        retriever``). A name that matches no folder, or a folder without a name, is refused."""
        display = class_names(self.classes)
        index = {name: i for i, name in enumerate(names)}
        mapping = {}
        for folder, (raw, shown) in enumerate(zip(self.classes, display, strict=True)):
            match = index.get(raw, index.get(shown))
            if match is None:
                raise ValueError(f"classes: folder {raw!r} of {self.root} has no name in the file")
            mapping[folder] = match
        unused = sorted(set(range(len(names))) - set(mapping.values()))
        if unused:
            raise ValueError(
                f"classes: {len(unused)} name(s) match no folder of {self.root} "
                f"(first: {names[unused[0]]!r}; folders: {', '.join(self.classes[:5])}...)"
            )
        self.items = [(path, mapping[label]) for path, label in self.items]

    def limit(self, n: int) -> None:
        """Only the first ``n`` images (in order)."""
        self.items = self.items[:n]

    def read(self, indices: range, errors: Counter) -> Iterator[dict[str, Any]]:
        for index in indices:
            path, label = self.items[index]
            relative = str(path.relative_to(self.root))
            image = _read(path)
            yield {
                "order": index,
                "key": relative,
                "image": image,
                "label": label,
                "captions": None,
                "where": {"path": relative, "size": len(image or b"")},
            }

    @staticmethod
    def read_at(url: str, where: dict[str, Any]) -> bytes:
        """The image at ``where["path"]`` under the folder ``url``; a path that would leave
        the folder (absolute, or through ``..``: a search index's record is data) is refused."""
        relative = Path(where["path"])
        if relative.is_absolute() or ".." in relative.parts:
            raise OSError(f"{where['path']!r} is not a path inside {url}")
        return read_image_file(Path(url) / relative)


class ShardSource:
    """WebDataset shards (img2dataset layout). ``caption_field`` is an extension (``txt``) or
    ``json.KEY`` for a field of the ``.json`` member; a caption may be a list of captions."""

    def __init__(self, pattern: str, image_field: str, label_field: str, caption_field: str):
        try:
            self.urls = expand_urls(pattern)
        except ValueError:
            self.urls = []
        if not self.urls:
            raise ValueError(f"{pattern!r}: no shards match")
        missing = missing_shards(self.urls)
        if missing:
            raise ValueError(
                f"{len(missing)} of the {len(self.urls)} shard(s) of {pattern!r} do not exist "
                f"(first: {missing[0]})"
            )
        self.image_keys = image_field.split(";") if image_field else IMAGE_EXTENSIONS
        self.label_field = label_field or "cls"
        self.caption_field = caption_field or "txt"

    def limit(self, n: int) -> None:
        """Only the shards that hold the first ``n`` samples (sizes from ``sizes.json``,
        ``_stats.json`` or a cached count), so ``max_samples`` does not embed the whole set."""
        total = 0
        for i, url in enumerate(self.urls):
            total += dataset_size([url], progress=False)[0]
            if total >= n:
                self.urls = self.urls[: i + 1]
                return

    def classes_and_templates(self) -> tuple[list[str] | None, list[str]]:
        """From a ``classes.json`` beside the first shard, if there is one."""
        beside = Path(self.urls[0]).parent / "classes.json"
        return read_classes(beside) if beside.is_file() else (None, [])

    def read(self, shard: int, errors: Counter) -> Iterator[dict[str, Any]]:
        """Shard ``shard``'s records; label and captions are read when asked (a bad one skips
        only the record that needs it)."""

        def skipped(reason: str) -> None:
            errors[reason] += 1

        url = self.urls[shard]
        for position, raw in enumerate(iter_samples(url, skipped, offsets=True)):
            ext = next((k for k in self.image_keys if k in raw), None)
            offset, size = raw["__offsets__"][ext] if ext else (-1, 0)
            yield {
                "order": shard * SHARD_ORDER + position,
                "key": raw["__key__"],
                "image": raw[ext] if ext else None,
                "label": lambda raw=raw: member_value(raw, self.label_field, "label"),
                "captions": lambda raw=raw: member_value(raw, self.caption_field),
                "where": {"ext": ext, "offset": offset, "size": size},
            }

    def records(self, stream: int, streams: int, errors: Counter) -> Iterator[dict[str, Any]]:
        for shard in range(stream, len(self.urls), streams):
            yield from self.read(shard, errors)

    def spans(self, chunk: int) -> list[tuple[str | None, int, int]]:
        return [(url, 0, 0) for url in self.urls]  # a shard is read whole

    def span_records(self, url: str, start: int, stop: int, errors: Counter):
        return self.read(self.urls.index(url), errors)

    @staticmethod
    def read_at(url: str, where: dict[str, Any]) -> bytes:
        if where["offset"] < 0:
            raise OSError("this item has no image member")
        return read_member(url, where["offset"], where["size"])


class HFSource(IndexedSource):
    """A Hugging Face ``datasets`` dataset: a ``save_to_disk`` directory, or anything
    ``load_dataset`` takes (a hub name, a local repo or a folder of parquet/csv files)."""

    def __init__(
        self, spec: str, split: str, image_field: str, label_field: str, caption_field: str
    ):
        import datasets

        self.image_field = image_field or "image"
        self.label_field = label_field or "label"
        self.caption_field = caption_field or "caption"
        name = spec.removeprefix("hf:")
        if Path(name).is_dir() and any((Path(name) / m).is_file() for m in HF_MARKERS):
            data = datasets.load_from_disk(name)
            if isinstance(data, datasets.DatasetDict):
                data = _split(data, split, spec)
        else:
            data = _split(datasets.load_dataset(name), split, spec)
        if self.image_field not in data.column_names:
            raise ValueError(
                f"{spec}: no image column {self.image_field!r} (columns: {data.column_names}); "
                f"set image_field"
            )
        if isinstance(data.features[self.image_field], datasets.Image):
            # Undecoded bytes, so a corrupt image is counted here instead of raising in datasets.
            data = data.cast_column(self.image_field, datasets.Image(decode=False))
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def limit(self, n: int) -> None:
        self.data = self.data.select(range(min(n, len(self.data))))

    def classes_and_templates(self) -> tuple[list[str] | None, list[str]]:
        """The names of a ``ClassLabel`` label column, if it is one."""
        feature = self.data.features.get(self.label_field)
        return (list(feature.names) if hasattr(feature, "names") else None), []

    def read(self, indices: range, errors: Counter) -> Iterator[dict[str, Any]]:
        columns = self.data.column_names
        for index in indices:
            row = self.data[index]
            image = row[self.image_field]
            if isinstance(image, dict):  # datasets.Image(decode=False): {"bytes", "path"}
                data = image.get("bytes")
                image = _read(image.get("path")) if data is None else data
            yield {
                "order": index,
                "key": str(index),
                "image": image,
                "label": row.get(self.label_field) if self.label_field in columns else None,
                "captions": row.get(self.caption_field) if self.caption_field in columns else None,
                "where": {"row": index},
            }

    def read_at(self, url: str, where: dict[str, Any]) -> bytes:
        (record,) = self.read(range(where["row"], where["row"] + 1), Counter())
        if record["image"] is None:
            raise OSError("this item has no image")
        if not isinstance(record["image"], bytes):  # a dataset of decoded images: re-encode
            import io

            buffer = io.BytesIO()
            record["image"].save(buffer, format="PNG")
            return buffer.getvalue()
        return record["image"]


FORMATS = {"imagefolder": ImageFolderSource, "wds": ShardSource, "hf": HFSource}


def _read(path: str | None) -> bytes | None:
    try:
        return read_image_file(path) if path else None  # never a device or a pipe
    except (OSError, SkipSample):
        return None  # counted as missing_image


def _split(data, split: str, spec: str):
    if split not in data:
        raise ValueError(f"{spec}: no split {split!r} (splits: {list(data)}); set split")
    return data[split]


def detect_format(data: str) -> str:
    if data.startswith("hf:"):
        return "hf"
    path = Path(data)
    if path.is_dir():
        if any((path / marker).is_file() for marker in HF_MARKERS):
            return "hf"
        if expand_local(data):  # a directory of shards (its *.tar files)
            return "wds"
        return "imagefolder"
    return "wds"


def open_source(spec, data: str, split: str):
    """The source of ``data`` in ``spec.format`` (``auto``: :func:`detect_format`), with
    ``spec``'s field names: an evaluator's ``data`` or ``train_data``, or a collection added
    to a search index (``search.units.SourceSpec``)."""
    kind = spec.format if spec.format != "auto" else detect_format(data)
    if kind == "imagefolder":
        return ImageFolderSource(data)
    if kind == "hf":
        return HFSource(data, split, spec.image_field, spec.label_field, spec.caption_field)
    return ShardSource(data, spec.image_field, spec.label_field, spec.caption_field)


def read_classes(path: str | Path) -> tuple[list[str], list[str]]:
    """(classnames, templates) from JSON (``{"classnames", "templates"}`` or a list of names) or
    a text file with one class name per line."""
    path = Path(path)
    if path.suffix == ".json":
        values = json.loads(path.read_text())
        if isinstance(values, list):
            return [str(v) for v in values], []
        if "classnames" not in values:
            raise ValueError(f"{path}: needs a 'classnames' list")
        return list(values["classnames"]), list(values.get("templates", []))
    return [line.strip() for line in path.read_text().splitlines() if line.strip()], []


def class_info(spec, source) -> tuple[list[str], list[str]]:
    """Class names (the ``classes`` file, else the dataset's own) and the file's templates."""
    if spec.classes:
        names, templates = read_classes(spec.classes)
        if isinstance(source, ImageFolderSource):
            source.use_names(names)  # the file's order, not the folders' sorted order
        return names, templates
    names, templates = source.classes_and_templates()
    if not names:
        raise ValueError(
            "classes: the dataset names no classes; give a classes file (JSON or one per line)"
        )
    return names, templates


@dataclass
class EvalDataset(IterableDataset):
    """This rank's and dataloader worker's share of ``source``, decoded and transformed.

    Yields ``{"order", "key", "image"[, "label"][, "captions"]}`` per good record and
    ``{"skip": reason}`` per bad one, so counts survive worker processes exactly.
    """

    source: Any
    transform: Callable[[Image.Image], torch.Tensor]
    need_label: bool = False
    need_captions: bool = False
    max_pixels: int = MAX_PIXELS

    def __post_init__(self):
        # Taken in the process that builds the dataset: a dataloader worker has no process group.
        self.rank, self.world = distributed.rank(), distributed.world_size()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        streams = self.world * workers
        errors: Counter = Counter()
        for record in self.source.records(self.rank * workers + worker, streams, errors):
            yield from ({"skip": reason} for reason in _drain(errors))
            try:
                yield self.decode(record)
            except SkipSample as skip:
                yield {"skip": skip.reason}
        yield from ({"skip": reason} for reason in _drain(errors))

    def decode(self, record: dict[str, Any]) -> dict[str, Any]:
        sample = {"order": record["order"], "key": record["key"]}
        if self.need_label:
            sample["label"] = parse_label(_value(record.get("label")))
        if self.need_captions:
            sample["captions"] = parse_captions(_value(record.get("captions")))
        rng = random.Random(record["order"])  # a random transform is seeded by position
        sample["image"] = record_image(record.get("image"), self.transform, rng, self.max_pixels)
        return sample


def record_image(image: Any, transform, rng: random.Random, max_pixels: int) -> torch.Tensor:
    """A record's image (bytes, or a PIL image from a dataset that decodes) through the one
    image module, or a counted skip: what evaluation and search both embed."""
    if image is None:
        raise SkipSample("missing_image")
    if isinstance(image, Image.Image):  # a dataset that hands out decoded images
        try:
            return transform(image, rng)
        except Exception:  # noqa: BLE001
            raise SkipSample("transform_failed") from None
    return decode_image(image, transform, rng, max_pixels)


def _value(value: Any) -> Any:
    """Shard records give their fields lazily (parsing can skip the record); others directly."""
    return value() if callable(value) else value


def _drain(errors: Counter) -> list[str]:
    reasons = list(errors.elements())
    errors.clear()
    return reasons


def eval_collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Good samples stacked; skipped ones only counted."""
    good = [s for s in samples if "skip" not in s]
    batch: dict[str, Any] = {
        "skipped": Counter(s["skip"] for s in samples if "skip" in s),
        "order": torch.tensor([s["order"] for s in good], dtype=torch.long),
        "keys": [s["key"] for s in good],
        "images": torch.stack([s["image"] for s in good]) if good else None,
    }
    if good and "label" in good[0]:
        batch["labels"] = torch.tensor([s["label"] for s in good], dtype=torch.long)
    if good and "captions" in good[0]:
        batch["captions"] = [s["captions"] for s in good]
    return batch
