"""Image transforms: a PIL image -> a (3, S, S) tensor.

Training uses :class:`CropResize`, which returns uint8 (the image tower normalises on the device,
so workers send a quarter of the bytes) and is built for speed without giving up quality:

* The crop box is chosen from the header's size before any pixel is decoded. When the box is at
  least 2x, 4x or 8x the output size, libjpeg decodes the JPEG at 1/2, 1/4 or 1/8 scale (DCT
  scaling via PIL's ``draft``), which skips most of the inverse DCT and colour conversion; the box
  is snapped to that scale's pixel grid (at most 7 source pixels), so the reduced image is cut at
  whole pixels.
* The box is resized with torch's uint8 bicubic antialiased kernel (PIL's filter, vectorised),
  which is several times faster than PIL's ``resize``.
``benchmarks/loader.py`` measures both against a torchvision baseline and checks the crops agree
(PSNR on the same box).

Training defaults to a resize + centre crop: captions may name positions and sizes ("at the top
left", "a small ..."), which a random-resized crop would falsify. ``random_resized`` with a mild
scale range, as in OpenCLIP, is there for natural-image corpora. ``image_transform`` is the
torchvision (float, normalised) version used by evaluation.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as T

from vlcontrast.data.decode import to_rgb

Box = tuple[int, int, int, int]  # left, top, width, height


@dataclass
class CropResize:
    size: int
    crop: str = "center"  # center | random_resized
    scale: tuple[float, float] = (0.9, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    draft: bool = True

    def __post_init__(self):
        if self.crop not in ("center", "random_resized"):
            raise ValueError(f"data.crop: unknown crop {self.crop!r}; use center or random_resized")

    def box(self, width: int, height: int, rng: random.Random) -> Box:
        """The crop in source pixels; random_resized samples as torchvision's RandomResizedCrop
        (area fraction in ``scale``, log-uniform aspect ratio in ``ratio``, 10 tries, then the
        largest centred box within the ratio range) but from ``rng``, seeded per sample."""
        if self.crop == "center":
            side = min(width, height)
            return (width - side) // 2, (height - side) // 2, side, side
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*log_ratio))
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                return rng.randint(0, width - w), rng.randint(0, height - h), w, h
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w, h = width, int(round(width / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            w, h = int(round(height * self.ratio[1])), height
        else:
            w, h = width, height
        return (width - w) // 2, (height - h) // 2, w, h

    def reduction(self, img: Image.Image, box: Box) -> int:
        """The largest DCT scale-down (1, 2, 4, 8) that keeps the box at least ``size``."""
        if not self.draft or img.format != "JPEG":
            return 1
        fits = (s for s in (8, 4, 2) if min(snap(box, s)[2:]) // s >= self.size)
        return next(fits, 1)

    def decode(self, img: Image.Image, box: Box) -> tuple[np.ndarray, Box]:
        """Decode (reduced when possible) -> (H', W', 3) uint8 array and the box in its pixels."""
        s = self.reduction(img, box)
        if s > 1:
            width, height = img.size
            img.draft("RGB", (width // s, height // s))
            if img.size != (width, height):  # no change if the image was already loaded
                box = tuple(v // s for v in snap(box, s))
        return np.array(to_rgb(img)), box

    def resize(self, array: np.ndarray, box: Box) -> torch.Tensor:
        left, top, w, h = box
        pixels = torch.from_numpy(array)[top : top + h, left : left + w]  # (h, w, 3)
        pixels = pixels.permute(2, 0, 1).unsqueeze(0)  # (1, 3, h, w), channels-last strides
        size = (self.size, self.size)
        out = F.interpolate(pixels, size=size, mode="bicubic", antialias=True)
        return out[0]  # (3, S, S) uint8, channels-last strides (the batch stack copies anyway)

    def __call__(self, img: Image.Image, rng: random.Random) -> torch.Tensor:
        return self.resize(*self.decode(img, self.box(*img.size, rng)))


def snap(box: Box, s: int) -> Box:
    """``box`` shrunk to the grid of a 1/``s`` decode (every edge a multiple of ``s``)."""
    left, top = -(-box[0] // s) * s, -(-box[1] // s) * s
    right, bottom = (box[0] + box[2]) // s * s, (box[1] + box[3]) // s * s
    return left, top, right - left, bottom - top


def normalize_uint8(
    images: torch.Tensor, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """(B, 3, H, W) uint8 -> float normalised with ``mean``/``std`` given for [0, 1] pixels."""
    mean_t = torch.tensor(mean, device=images.device).view(1, -1, 1, 1) * 255
    std_t = torch.tensor(std, device=images.device).view(1, -1, 1, 1) * 255
    return (images.float() - mean_t) / std_t


def image_transform(
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    crop: str = "center",
    scale: tuple[float, float] = (0.9, 1.0),
) -> T.Compose:
    """torchvision version: PIL image (any mode) -> float normalised (3, S, S)."""
    interp = T.InterpolationMode.BICUBIC
    if crop == "random_resized":
        geometry = [T.RandomResizedCrop(size, scale=scale, interpolation=interp)]
    elif crop == "center":
        geometry = [T.Resize(size, interpolation=interp), T.CenterCrop(size)]
    else:
        raise ValueError(f"unknown crop {crop!r}: use center or random_resized")
    return T.Compose([to_rgb, *geometry, T.ToTensor(), T.Normalize(mean, std)])
