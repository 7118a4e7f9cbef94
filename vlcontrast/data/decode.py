"""Raw tar sample -> {"image": uint8 tensor, "text": str, "key": str[, "label": int]}, or a
counted skip.

Second stage of the data flow (after ``tar_reader``, before batching). The image goes through
the one image module (``data.image``: any mode to RGB, DCT-scaled JPEG decoding, crop and
resize); the caption through the one caption parser (``data.captions``). ``caption_key`` empty
means an image-only source: no caption is read and the sample has no ``text``. A caption list
gives one caption per sample, picked from the sample's own seeded ``rng``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from vlcontrast.data.captions import member_value, parse_captions, parse_label, read_caption
from vlcontrast.data.image import IMAGE_EXTENSIONS, MAX_PIXELS, CropResize, decode_image
from vlcontrast.data.skip import SkipSample
from vlcontrast.data.transforms import MultiView


@dataclass
class Decoder:
    """Raw sample -> decoded sample; ``transform`` crops and resizes (one view or several)."""

    transform: CropResize | MultiView
    image_keys: tuple[str, ...] = IMAGE_EXTENSIONS
    caption_key: str = "txt"  # "": image-only
    max_pixels: int = MAX_PIXELS  # larger images are skipped as too_large before decoding
    label_key: str = ""  # "": no label read; "cls": the class index member (supcon)
    # Text pairs (objective text_pairs): the positive's key, the hard negatives' key and how
    # many of them each sample gives (its first ones); "" / 0: none
    positive_key: str = ""
    negatives_key: str = ""
    negatives: int = 0

    def __call__(self, raw: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        sample: dict[str, Any] = {"key": raw["__key__"], "url": raw["__url__"]}
        image_key = next((k for k in self.image_keys if k in raw), None)
        if self.image_keys and image_key is None:  # no image_keys: a text-only task
            raise SkipSample("missing_image")
        captions = read_caption(raw, self.caption_key) if self.caption_key else None
        label = read_label(raw, self.label_key) if self.label_key else None
        if self.positive_key:
            positives = parse_captions(member_value(raw, self.positive_key, "positive"))
            sample["positive"] = positives[rng.randrange(len(positives))]
        if self.negatives:
            found = parse_captions(member_value(raw, self.negatives_key, "negatives"))
            if len(found) < self.negatives:
                raise SkipSample("missing_negatives")
            sample["negatives"] = found[: self.negatives]
        if image_key is not None:
            sample["image"] = decode_image(raw[image_key], self.transform, rng, self.max_pixels)
        if label is not None:
            sample["label"] = label
        if captions is not None:
            sample["text"] = (
                captions[rng.randrange(len(captions))] if len(captions) > 1 else captions[0]
            )
        return sample


def read_label(raw: dict[str, Any], key: str) -> int:
    """The integer class of a raw sample (``cls`` member or ``json.FIELD``), or a counted skip
    (``missing_label``, ``bad_label``)."""
    return parse_label(member_value(raw, key, "label"))
