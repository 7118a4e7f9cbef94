"""``index build`` / ``index add``: stream a collection through a checkpoint's image tower into a
search index (``search.layout``), resumably, with bounded memory.

Plan (rank 0): the collection's units (``search.units``) are listed in the manifest; units whose
``.done.json`` exists are not embedded again, so a killed build resumes where it stopped and
``index add`` embeds only shards the index does not hold yet. Embed (every rank): the pending
units are dealt round-robin to ranks and, within a rank, to dataloader workers; a worker decodes
its units one after the other in batches that never span two units and marks each unit's end,
so the main process writes a unit as soon as it is complete and holds at most one unit per
worker in memory, and a unit's bytes do not depend on how the build was split or resumed.
Images go through the checkpoint's own evaluation transform (the training centre crop), so an
indexed image is the same tensor ``vlcontrast eval`` embeds. Bad images are skipped and
counted by reason, as in training.
"""

from __future__ import annotations

import hashlib
import random
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm.auto import tqdm

from vlcontrast import distributed
from vlcontrast.data.batching import Collate
from vlcontrast.data.collection import record_image
from vlcontrast.data.image import MAX_PIXELS
from vlcontrast.data.skip import SkipSample
from vlcontrast.data.sources import expand_urls, known_size
from vlcontrast.embed import encode_images, eval_transform
from vlcontrast.models import manifest, sharded_weights
from vlcontrast.models.build import has_image, has_text
from vlcontrast.models.load import WEIGHTS, load_model, resolve_checkpoint
from vlcontrast.models.text_tower import load_tokenizer
from vlcontrast.search import layout
from vlcontrast.search.units import (
    SourceSpec,
    Unit,
    first_caption,
    label_of,
    open_collection,
    plan_units,
    unit_records,
)


@dataclass
class BuildOptions:
    dtype: str = "float16"  # halves the index; top-10 overlap with float32 is 0.99+ (benchmark)
    batch_size: int = 256
    num_workers: int = 2
    faiss: str = "none"  # none | auto | flat | hnsw | ivfpq: also build an approximate index
    faiss_params: dict[str, Any] = field(default_factory=dict)
    overwrite: bool = False
    allow_download: bool = False
    allow_pipe: bool = False  # an existing index's pipe: URLs may run (layout.check_commands)
    progress: bool = True
    device: str | torch.device | None = None


def build_index(
    out_dir: str | Path,
    sources: list[SourceSpec],
    checkpoint: str | Path | None = None,
    options: BuildOptions | None = None,
    add: bool = False,
) -> dict[str, Any]:
    """Build (or resume) the index in ``out_dir`` over ``sources``; with ``add``, append the
    units of ``sources`` that the index does not hold. Every rank calls it. Returns a summary
    (rows, units, skip counts, images/s) on every rank."""
    options = options or BuildOptions()
    if options.dtype not in layout.DTYPES:
        raise ValueError(f"dtype: {options.dtype!r} is not one of {', '.join(layout.DTYPES)}")
    out_dir = Path(out_dir)
    if checkpoint is None:
        checkpoint = layout.read_manifest(out_dir)["checkpoint"]
    checkpoint = resolve_checkpoint(checkpoint)  # a run folder or RUN/latest: its newest step
    model, _, cfg = load_model(checkpoint, options.allow_download)
    device = torch.device(options.device or "cpu")
    model.to(device)
    if distributed.is_main():
        plan(out_dir, Path(checkpoint), sources, add, options, model.embed_dim)
    _barrier()
    manifest = layout.read_manifest(out_dir)
    specs = [SourceSpec(**s) for s in manifest["sources"]]
    units = [Unit(**u) for u in manifest["units"] if not layout.is_done(out_dir, u["name"])]
    mine = units[distributed.rank() :: distributed.world_size()]
    start = time.perf_counter()
    images = embed_units(model, cfg, specs, mine, out_dir, manifest["dtype"], options, device)
    seconds = time.perf_counter() - start
    _barrier()
    files = layout.IndexFiles.open(out_dir)
    summary = {
        "index": str(out_dir),
        "rows": len(files),
        "units": len(files.units),
        "pending_units": len(files.pending),
        "embedded_now": images,
        "images_per_s": images / seconds if seconds > 0 and images else 0.0,
        "skipped": dict(files.skipped),
        "text_queries": has_text(cfg),  # an image-only model is searched by image
    }
    if distributed.is_main() and (options.faiss != "none" or _has_faiss(out_dir)):
        from vlcontrast.search.backends import build_faiss

        kind, params = options.faiss, options.faiss_params
        if kind == "none":  # rows were added: rebuild the saved index with its own settings
            import json

            saved = json.loads((out_dir / "faiss.json").read_text())
            kind, params = saved["kind"], {**saved["params"], **params}
        summary["faiss"] = build_faiss(files, kind, params)
    _barrier()
    return summary


def plan(
    out_dir: Path,
    checkpoint: Path,
    sources: list[SourceSpec],
    add: bool,
    options: BuildOptions,
    dim: int,
) -> dict[str, Any]:
    """Write the manifest: the units of ``sources`` after those already planned."""
    exists = (out_dir / layout.MANIFEST).is_file()
    if exists and options.overwrite and not add:
        shutil.rmtree(out_dir)
        exists = False
    if add and not exists:
        raise ValueError(f"{out_dir}: no index to add to; make one with 'vlcontrast index build'")
    if exists:
        manifest = layout.read_manifest(out_dir)
        layout.check_commands(out_dir, manifest, options.allow_pipe or given_commands(sources))
        if Path(manifest["checkpoint"]).resolve() != checkpoint.resolve():
            raise ValueError(
                f"{out_dir} was built from {manifest['checkpoint']}, not {checkpoint}: embeddings "
                f"of two models cannot be searched together; pass --overwrite to start again"
            )
        if manifest.get("weights") != weights_stamp(checkpoint):
            raise ValueError(
                f"{checkpoint}'s weights changed since {out_dir} was built: its embeddings are of "
                f"other weights; pass --overwrite to build it again"
            )
        if not add and manifest["sources"] != [s.to_dict() for s in sources]:
            raise ValueError(
                f"{out_dir} holds an index of other data ({manifest['sources'][0]['data']}...): "
                f"use 'vlcontrast index add {out_dir} --data ...' to add shards, or --overwrite"
            )
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        manifest = {
            "format": layout.FORMAT,
            "checkpoint": str(checkpoint.resolve()),
            "weights": weights_stamp(checkpoint),
            "dim": dim,
            "dtype": options.dtype,
            "sources": [],
            "units": [],
        }
    known = {unit["url"] for unit in manifest["units"]}
    for spec in sources:
        entry = spec.to_dict()
        if entry not in manifest["sources"]:
            manifest["sources"].append(entry)
        index = manifest["sources"].index(entry)
        new = plan_units(spec, index, len(manifest["units"]), known)
        manifest["units"].extend(unit.to_dict() for unit in new)
        known.update(unit.url for unit in new)
    layout.write_manifest(out_dir, manifest)
    return manifest


def given_commands(sources: list[SourceSpec]) -> set[str]:
    """The ``pipe:`` URLs of the sources the user named, as written and brace-expanded: the
    shell commands a resumed build may run."""
    parts = {part.strip() for spec in sources for part in spec.data.split("::")}
    pipes = {part for part in parts if part.startswith("pipe:")}
    return pipes | {url for part in pipes for url in expand_urls(part)}


def weights_stamp(checkpoint: Path) -> str:
    """A fingerprint of the checkpoint's weights (size and a hash of the first and last MiB of
    each weights file, which hold the header and the last tensors): a retrained checkpoint
    under the same path is told apart without hashing gigabytes, and a copied one is still
    recognised. A sharded (FSDP) checkpoint's files are its ranks' shards."""
    files = [checkpoint / WEIGHTS]
    if manifest.layout(checkpoint) == "sharded":
        files = sorted((checkpoint / sharded_weights.SHARDS).glob("*"))
    digest = hashlib.sha1()
    for path in files:
        size = path.stat().st_size
        digest.update(str(size).encode())
        with open(path, "rb") as handle:
            digest.update(handle.read(1 << 20))
            handle.seek(max(0, size - (1 << 20)))
            digest.update(handle.read(1 << 20))
    return digest.hexdigest()


class UnitStream(IterableDataset):
    """Batches of decoded images of ``units``, a dataloader worker's share (every
    ``workers``-th unit). A batch never spans two units, so a unit's embeddings depend only on
    the unit and the batch size: a resumed, added-to or multi-rank build writes the same bytes
    as a fresh single-process one. Yields ``{"unit", "items" (b, 3, S, S) uint8 (a text index:
    the captions) or None, "records", "skipped" {reason: n}, "end"}``; the last batch of a unit
    has ``end`` set."""

    def __init__(
        self, specs, units: list[Unit], transform, max_pixels: int, batch_size: int, text=False
    ):
        self.specs, self.units, self.transform = specs, units, transform
        self.max_pixels, self.batch_size = max_pixels, batch_size
        self.text = text  # a text-only model: items are their first caption, not their image
        self.collections: dict[int, Any] = {}

    def collection(self, index: int):
        if index not in self.collections:
            self.collections[index] = open_collection(self.specs[index])
        return self.collections[index]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        for unit in self.units[worker::workers]:
            errors: Counter = Counter()
            images, records = [], []
            for position, raw in enumerate(
                unit_records(self.collection(unit.source), unit, errors)
            ):
                try:
                    images.append(self.item(raw, random.Random(position)))
                except SkipSample as skip:
                    errors[skip.reason] += 1
                    continue
                records.append(item_record(raw))
                if len(images) == self.batch_size:
                    yield batch(unit, images, records, errors, end=False)
                    images, records = [], []
                    errors.clear()  # the same Counter: the shard reader counts into it
            yield batch(unit, images, records, errors, end=True)

    def item(self, raw: dict[str, Any], rng: random.Random) -> torch.Tensor | str:
        """The decoded image, or for a text index the item's first caption."""
        if not self.text:
            return record_image(raw["image"], self.transform, rng, self.max_pixels)
        caption = first_caption(raw["captions"])
        if caption is None:
            raise SkipSample("missing_caption")
        return caption


def item_record(raw: dict[str, Any]) -> dict[str, Any]:
    """What the index stores of an item: key, first caption, label (when there is one) and
    where its image is."""
    record = {"key": raw["key"], "caption": first_caption(raw["captions"])}
    label = label_of(raw["label"])
    if label is not None:
        record["label"] = label
    record["where"] = raw["where"]
    return record


def batch(unit: Unit, items: list, records: list, errors: Counter, end: bool) -> dict:
    """``items``: decoded images, stacked, or a text index's captions, as a list."""
    if items and torch.is_tensor(items[0]):
        items = torch.stack(items)
    return {
        "unit": unit.name,
        "items": items if len(items) else None,
        "records": records,
        # a plain dict: the dataloader's default_convert copies a mapping and then update()s it,
        # which doubles a Counter's counts
        "skipped": dict(errors),
        "end": end,
    }


@torch.no_grad()
def embed_units(
    model,
    cfg,
    specs: list[SourceSpec],
    units: list[Unit],
    out_dir: Path,
    dtype: str,
    options: BuildOptions,
    device: torch.device,
) -> int:
    """Embed and write ``units``; returns the number of images embedded."""
    if not units:
        return 0
    model.eval()
    max_pixels = getattr(cfg.data, "max_pixels", MAX_PIXELS)
    text = not has_image(cfg)
    stream = UnitStream(specs, units, eval_transform(cfg), max_pixels, options.batch_size, text)
    if text:
        tokenize = Collate(load_tokenizer(cfg.text), cfg.text.context_length).tokenize
    workers = min(options.num_workers, len(units))
    loader = DataLoader(stream, batch_size=None, num_workers=workers)
    show = options.progress and distributed.is_main()
    bar = tqdm(
        total=_expected_items(specs, units),
        desc="index",
        unit="img",
        disable=not show,
        smoothing=0.1,
    )
    pending: dict[str, dict[str, Any]] = {}  # at most one unit per worker
    embedded, skipped = 0, 0
    for part in loader:
        unit = pending.setdefault(part["unit"], {"emb": [], "records": [], "skipped": Counter()})
        unit["skipped"].update(part["skipped"])
        if part["items"] is not None:
            if text:
                tokens = {k: v.to(device) for k, v in tokenize(part["items"]).items()}
                emb = model.encode_text(tokens["input_ids"], tokens["attention_mask"])
                emb = emb.float().cpu().numpy()
            else:
                emb = encode_images(model, part["items"], device).numpy()
            unit["emb"].append(emb)  # (b, D)
            unit["records"].extend(part["records"])
            embedded += len(part["records"])
        if part["end"]:
            done = pending.pop(part["unit"])
            matrix = np.concatenate(done["emb"]) if done["emb"] else np.zeros((0, model.embed_dim))
            layout.write_unit(
                out_dir, part["unit"], matrix, done["records"], done["skipped"], dtype
            )
        bar.update(len(part["records"]) + sum(part["skipped"].values()))
        if part["skipped"]:
            skipped += sum(part["skipped"].values())
            bar.set_postfix(skipped=skipped)
    bar.close()
    return embedded


def _expected_items(specs: list[SourceSpec], units: list[Unit]) -> int | None:
    """This rank's item count for the progress bar, when it is known without reading."""
    total = 0
    for unit in units:
        if unit.stop > unit.start:
            total += unit.stop - unit.start
            continue
        size = known_size([unit.url]) if specs[unit.source].format == "wds" else None
        if size is None:
            return None
        total += size
    return total


def _has_faiss(out_dir: Path) -> bool:
    return (out_dir / "faiss.json").is_file()


def _barrier() -> None:
    if distributed.world_size() > 1:
        torch.distributed.barrier()
