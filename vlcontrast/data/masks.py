"""Segmentation masks: reading one as class indices, and writing a folder of images and masks
(VOC's ``JPEGImages`` + ``SegmentationClass``, ADE20K's ``images`` + ``annotations``, or any
two folders whose files share names) as the shards ``vlcontrast eval dense-knn`` and
``dense-linear`` read.

A sample of those shards is an image (``{key}.jpg``, ``.png``, ``.webp``), its mask
``{key}.mask.png`` (one 8-bit channel of the image's size, each pixel a class index, ``255``
ignored) and ``{key}.json`` with the pair's ``id`` (its path under the mask folder, without the
suffix); ``classes.json`` beside the shards names the classes.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from vlcontrast.data.collection import read_classes
from vlcontrast.data.image import read_image_file
from vlcontrast.data.limits import IMAGE_SUFFIXES
from vlcontrast.data.shard_writer import write_shards
from vlcontrast.data.skip import SkipSample


def open_mask(data: bytes) -> Image.Image:
    """A mask's PNG, read lazily (its size is checked against the image's before decoding)."""
    try:
        return Image.open(io.BytesIO(data))
    except Exception:  # noqa: BLE001 - PIL raises many types for corrupt files
        raise SkipSample("corrupt_mask") from None


def class_indices(mask: Image.Image) -> Image.Image:
    """A mask as one 8-bit channel of class indices, or a skip that says why it is not one:
    ``L`` and ``P`` (a palette mask's indices, as VOC's) as they are; ``1`` as 0 and 1; a
    16- or 32-bit channel whose values all fit a byte; colour whose channels are all equal
    (a grey mask saved as RGB). A colour-coded mask (``mask_not_one_channel``), a label over
    255 (``mask_label_over_255``) or a JPEG (``mask_lossy_jpeg``: its compression noise
    changes labels along every edge) would otherwise be read as other labels without a word."""
    if mask.format == "JPEG":
        raise SkipSample("mask_lossy_jpeg")
    if mask.mode in ("L", "P"):
        return mask
    values = np.asarray(mask)
    if values.ndim == 3:
        if not (values == values[..., :1]).all():
            raise SkipSample("mask_not_one_channel")
        values = values[..., 0]
    if values.dtype != np.bool_ and (values.min() < 0 or values.max() > 255):
        raise SkipSample("mask_label_over_255")
    return Image.fromarray(values.astype(np.uint8))  # mode L


def reduce_zero_label(indices: Image.Image) -> Image.Image:
    """ADE20K's convention (mmsegmentation's ``reduce_zero_label``): label 0 ("other") becomes
    ignored (255) and every other label moves down by one; 255 stays ignored."""
    values = np.asarray(indices, dtype=np.int16)
    values = np.where((values == 0) | (values == 255), 255, values - 1)
    return Image.fromarray(values.astype(np.uint8))


def checked_mask(data: bytes, size: tuple[int, int], zero_ignored: bool = False) -> bytes:
    """A mask PNG's bytes, as they are if it is 8-bit grey or palette and ``size`` (the image's)
    wide and high, else re-encoded as 8-bit grey (``zero_ignored``: with
    :func:`reduce_zero_label` applied); or a counted skip."""
    with open_mask(data) as mask:
        if mask.size != size:
            raise SkipSample("mask_size_mismatch")
        try:
            indices = class_indices(mask)
            indices.load()
        except SkipSample:
            raise
        except Exception:  # noqa: BLE001 - a truncated PNG fails when its pixels are read
            raise SkipSample("corrupt_mask") from None
        if mask.format == "PNG" and indices is mask and not zero_ignored:
            return data
        indices = reduce_zero_label(indices) if zero_ignored else indices.convert("L")
        out = io.BytesIO()
        indices.save(out, format="PNG")
        return out.getvalue()


def find_image(folder: Path, name: str) -> Path | None:
    """The image ``folder/name.EXT`` for the first image suffix that exists."""
    for suffix in IMAGE_SUFFIXES:
        for path in (folder / f"{name}{suffix}", folder / f"{name}{suffix.upper()}"):
            if path.is_file():
                return path
    return None


def mask_ids(masks: Path) -> list[str]:
    """The path under ``masks`` (without ``.png``) of each PNG mask in it, or a message that says
    what is there instead: masks are lossless PNG, as VOC's and ADE20K's are (a JPEG mask's
    compression noise would change labels along every edge)."""
    ids = [str(p.relative_to(masks).with_suffix("")) for p in sorted(masks.rglob("*.png"))]
    if not ids:
        others = Counter(p.suffix.lower() for p in masks.rglob("*") if p.is_file())
        found = ", ".join(f"{n} {suffix or 'without suffix'}" for suffix, n in others.items())
        raise ValueError(
            f"masks: no .png mask under {masks} ({found or 'no file'}); masks must be PNG, "
            "one 8-bit channel of class indices"
        )
    return ids


def mask_pairs(images: Path, masks: Path, ids: list[str] | None, progress: bool = False):
    """(id, image path or None, mask path or None) for each id of ``ids`` (VOC's
    ``ImageSets/Segmentation/train.txt``), else for each ``.png`` under ``masks``; with a
    progress bar if ``progress``."""
    if ids is None:
        ids = mask_ids(masks)
    for name in tqdm(ids, desc="pairs", unit="pair", disable=not progress):
        mask = masks / f"{name}.png"
        yield name, find_image(images, name), mask if mask.is_file() else None


def segmentation_samples(
    pairs, skipped: Counter, zero_ignored: bool = False
) -> Iterator[dict[str, Any]]:
    """Shard samples of checked (image, mask) pairs; the others counted in ``skipped``."""
    from vlcontrast.data.convert import encode_image

    for index, (name, image, mask) in enumerate(pairs):
        try:
            if image is None or mask is None:
                raise SkipSample("missing_image" if image is None else "missing_mask")
            ext, data, sizes = encode_image(read_image_file(image), 0)
            size = (sizes["width"], sizes["height"])
            mask_png = checked_mask(read_image_file(mask, "missing_mask"), size, zero_ignored)
        except SkipSample as skip:
            skipped[skip.reason] += 1
            continue
        except OSError:
            skipped["unreadable_file"] += 1
            continue
        meta = json.dumps({"id": name, "width": size[0], "height": size[1]})
        yield {"__key__": f"{index:09d}", ext: data, "mask.png": mask_png, "json": meta}


def write_segmentation_shards(
    images: str | Path,
    masks: str | Path,
    out: str | Path,
    ids: str | Path | None = None,
    classes: str | Path | None = None,
    per_shard: int = 1000,
    zero_ignored: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Shards of the image/mask pairs of two folders (see the module), ``classes.json`` from
    ``classes`` (JSON list or one name a line; index = pixel value, after
    :func:`reduce_zero_label` if ``zero_ignored``) beside them. Returns the samples written, the
    shard names and the skips by reason."""
    images, masks = Path(images), Path(masks)
    for flag, folder in (("images", images), ("masks", masks)):
        if not folder.is_dir():
            raise ValueError(f"{flag}: no folder {folder}")
    names = None
    if ids is not None:
        if not Path(ids).is_file():
            raise ValueError(f"ids: no file {ids}")
        names = [line.strip() for line in Path(ids).read_text().splitlines() if line.strip()]
    classnames = None
    if classes is not None:
        if not Path(classes).is_file():
            raise ValueError(f"classes: no file {classes}")
        classnames = read_classes(classes)[0]
        if not classnames:
            raise ValueError(f"classes: {classes} names no class")
    if names is None:
        names = mask_ids(masks)  # before anything is written
    skipped: Counter = Counter()
    pairs = mask_pairs(images, masks, names, progress)
    samples = segmentation_samples(pairs, skipped, zero_ignored)
    sizes = write_shards(samples, out, per_shard)
    written = sum(sizes.values())
    if classnames is not None:
        (Path(out) / "classes.json").write_text(json.dumps(classnames) + "\n")
    return {"samples": written, "shards": sorted(sizes), "skipped": dict(skipped)}
