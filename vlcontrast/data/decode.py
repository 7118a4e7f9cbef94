"""Raw tar sample -> {"image": uint8 tensor, "text": str, "key": str}, or a counted skip.

Second stage of the data flow (after ``tar_reader``, before batching). Any PIL image mode becomes
RGB: palette and alpha images are composited on white (what a viewer shows; a plain
``convert("RGB")`` exposes whatever colour transparent pixels happen to store), 16-bit grayscale is
scaled to 8 bits rather than clipped, CMYK goes through PIL's conversion. The caption comes from
``txt`` or a JSON field (``json.caption``, nested as ``json.meta.caption``); a JSON list holds
several captions, one of which is picked at random in training (seeded per sample).
"""

from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from vlcontrast.data.transforms import CropResize


class SkipSample(Exception):
    """Raised for a sample to skip; ``reason`` is the counter key."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def reuse_image_memory(blocks: int = 8) -> None:
    """Let PIL keep up to ``blocks`` freed image buffers for reuse (``PILLOW_BLOCKS_MAX``), in
    the process that decodes. By default every decoded image gets fresh memory from the OS, and
    the page faults of touching it cost as much as a reduced-size JPEG decode; a few kept blocks
    (each at most PIL's 16 MB block size) remove them. Measured by ``benchmarks/loader.py``."""
    if Image.core.get_blocks_max() < blocks:
        Image.core.set_blocks_max(blocks)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any mode -> RGB, loading the image if it is not loaded yet."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit grayscale (PNG): PIL's convert would clip at 255, i.e. turn it white.
        array = np.asarray(img, dtype=np.uint32) >> 8
        return Image.fromarray(array.astype(np.uint8), "L").convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def read_caption(raw: dict[str, Any], key: str) -> list[str]:
    """The caption(s) of ``raw`` under ``key`` (``txt`` or ``json.FIELD[.FIELD]``)."""
    member, _, path = key.partition(".")
    if member not in raw:
        raise SkipSample("missing_caption")
    try:
        text = raw[member].decode("utf-8")
    except UnicodeDecodeError:
        raise SkipSample("bad_caption_encoding") from None
    if path:
        try:
            value: Any = json.loads(text)
        except ValueError:
            raise SkipSample("bad_json") from None
        for part in path.split("."):
            if not isinstance(value, dict) or part not in value:
                raise SkipSample("missing_caption")
            value = value[part]
        values = value if isinstance(value, list) else [value]
        captions = [v.strip() for v in values if isinstance(v, str)]
    else:
        captions = [text.strip()]
    captions = [c for c in captions if c]
    if not captions:
        raise SkipSample("empty_caption")
    return captions


@dataclass
class Decoder:
    """Raw sample -> decoded sample; ``transform`` crops and resizes (see ``transforms``)."""

    transform: CropResize
    image_keys: tuple[str, ...] = ("jpg", "jpeg", "png", "webp")
    caption_key: str = "txt"

    def __call__(self, raw: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        image_key = next((k for k in self.image_keys if k in raw), None)
        if image_key is None:
            raise SkipSample("missing_image")
        captions = read_caption(raw, self.caption_key)
        try:
            data = raw[image_key]
            with Image.open(io.BytesIO(data)) as img:
                # One read for the whole file, not 64 KB blocks: each block is a return to
                # Python, a copy of the leftover bytes and a suspension of the JPEG decoder.
                img.decodermaxblock = max(len(data), img.decodermaxblock)
                box = self.transform.box(*img.size, rng)
                pixels, box = self.transform.decode(img, box)
        except Exception:  # noqa: BLE001 - PIL raises many types for corrupt files
            raise SkipSample("corrupt_image") from None
        try:
            image = self.transform.resize(pixels, box)
        except Exception:  # noqa: BLE001
            raise SkipSample("transform_failed") from None
        text = captions[rng.randrange(len(captions))] if len(captions) > 1 else captions[0]
        return {"image": image, "text": text, "key": raw["__key__"], "url": raw["__url__"]}
