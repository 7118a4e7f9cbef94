"""Views of a decoded image: the hook the image-only objectives fill with augmentations.

A transform has two halves, run in the decoding process: ``read(img, rng)`` does the PIL work
(crop boxes chosen from the header, one decode) and ``finish(decoded)`` makes the uint8 tensor(s).
:class:`~vlcontrast.data.image.CropResize` is the one-view transform; :class:`MultiView` makes K
views from one decode (lightly's ``MultiViewTransform``, but the file is decoded once, not K
times): the JPEG is decoded at the largest DCT reduction that still suits every view's box, and
each view is cut and resized from those pixels. The sample's ``image`` is then (K, 3, S, S), and a
batch's ``images`` (B, K, 3, S, S); with ``groups`` (views of several sizes: multi-crop), a dict
of one (count, 3, S, S) tensor per group, and a batch's ``views`` one (B, count, 3, S, S) per
group. Every random choice comes from the sample's own ``rng``, seeded by its position, so a
resumed run repeats the same views.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from vlcontrast.data.image import Box, CropResize, decode_reduced, scale_box

# A per-view augmentation on the uint8 (3, S, S) tensor, drawing from the sample's rng.
Augment = Callable[[torch.Tensor, random.Random], torch.Tensor]


@dataclass
class MultiView:
    """K crops (each with its own augmentation) from one decode of the image."""

    views: Sequence[CropResize]
    augments: Sequence[Augment | None] = field(default_factory=tuple)
    groups: Sequence[tuple[str, int]] = ()  # (name, count) in view order; () : one tensor

    def read(self, img: Image.Image, rng: random.Random) -> tuple[np.ndarray, list[Box]]:
        boxes = [view.box(*img.size, rng) for view in self.views]
        s = min(view.reduction(img, box) for view, box in zip(self.views, boxes, strict=True))
        array, s = decode_reduced(img, s)
        return array, [scale_box(box, s) for box in boxes]

    def finish(self, decoded: tuple[np.ndarray, list[Box]], rng: random.Random | None = None):
        array, boxes = decoded
        out = []
        for k, (view, box) in enumerate(zip(self.views, boxes, strict=True)):
            image = view.resize(array, box)
            augment = self.augments[k] if k < len(self.augments) else None
            out.append(augment(image, rng or random.Random(k)) if augment else image)
        if not self.groups:
            return torch.stack(out)  # (K, 3, S, S) uint8
        grouped, start = {}, 0
        for name, count in self.groups:
            grouped[name] = torch.stack(out[start : start + count])  # (count, 3, S, S)
            start += count
        return grouped
