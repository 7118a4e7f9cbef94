"""The one image module: bytes -> PIL -> RGB -> crop box -> (reduced) decode -> uint8 tensor.

Training, evaluation, search, shard making and inspection all open images here, so the same
file is the same tensor everywhere (a palette PNG with transparency, a 16-bit PNG or a CMYK JPEG
included). Any PIL mode becomes RGB (``to_rgb``): palette and alpha images are composited on
white (what a viewer shows; a plain ``convert("RGB")`` exposes whatever colour transparent pixels
happen to store), 16-bit grayscale is scaled to 8 bits rather than clipped, CMYK goes through
PIL's conversion.

:class:`CropResize` returns uint8 (the image tower normalises on the device, so workers send a
quarter of the bytes) and is built for speed without giving up quality:

* The crop box is chosen from the header's size before any pixel is decoded. When the box is at
  least 2x, 4x or 8x the output size, libjpeg decodes the JPEG at 1/2, 1/4 or 1/8 scale (DCT
  scaling via PIL's ``draft``), which skips most of the inverse DCT and colour conversion; the box
  is snapped to that scale's pixel grid (at most 7 source pixels), so the reduced image is cut at
  whole pixels.
* The box is resized with torch's uint8 bicubic antialiased kernel (PIL's filter, vectorised),
  which is several times faster than PIL's ``resize``.
``benchmarks/loader.py`` measures both against a torchvision baseline and checks the crops agree
(PSNR on the same box).

Evaluation uses the ``center`` crop (resize the central square); training's default is also
``center``: captions may name positions and sizes ("at the top left", "a small ..."), which a
random-resized crop would falsify. ``random_resized`` with a mild scale range, as in OpenCLIP,
is there for natural-image corpora.
"""

from __future__ import annotations

import io
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vlcontrast.data.limits import (  # noqa: F401
    IMAGE_EXTENSIONS,
    IMAGE_SUFFIXES,
    MAX_FILE_BYTES,
    MAX_PIXELS,
    Oversized,
)
from vlcontrast.data.skip import SkipSample


def open_image(data: bytes) -> Image.Image:
    """A lazily decoded PIL image over ``data``, set to decode in one read; a shard member
    too large to have been read (``limits.Oversized``) is a ``too_large`` skip."""
    if isinstance(data, Oversized):
        raise SkipSample("too_large")
    img = Image.open(io.BytesIO(data))
    # One read for the whole file, not 64 KB blocks: each block is a return to Python, a copy of
    # the leftover bytes and a suspension of the JPEG decoder.
    img.decodermaxblock = max(len(data), img.decodermaxblock)
    return img


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


Box = tuple[int, int, int, int]  # left, top, width, height


@dataclass
class CropResize:
    size: int
    crop: str = "center"  # center | random_resized
    scale: tuple[float, float] = (0.9, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    draft: bool = True
    # center crop only: False cuts the largest square, then resizes it; True resizes the whole
    # image so its shortest side is ``size``, then cuts the centred square (CLIP's order; full
    # decode, so the pixels equal transformers' CLIPImageProcessor)
    shortest_side: bool = False
    # center crop only: the share of the centred square kept (0.875: resize to 256, cut 224)
    fraction: float = 1.0

    def __post_init__(self):
        if self.crop not in ("center", "random_resized"):
            raise ValueError(f"data.crop: unknown crop {self.crop!r}; use center or random_resized")
        self.shortest = self.crop == "center" and self.shortest_side

    def shortest_size(self) -> int:
        """Shortest-side mode: the side the image is resized to before the centred ``size``
        is cut (timm's ``floor(size / crop_pct)``: 256 for 224 at 0.875)."""
        return max(self.size, math.floor(self.size / self.fraction))

    def box(self, width: int, height: int, rng: random.Random) -> Box:
        """The crop in source pixels; random_resized samples as torchvision's RandomResizedCrop
        (area fraction in ``scale``, log-uniform aspect ratio in ``ratio``, 10 tries, then the
        largest centred box within the ratio range) but from ``rng``, seeded per sample."""
        if self.shortest:
            return 0, 0, width, height
        if self.crop == "center":
            side = max(1, round(min(width, height) * self.fraction))
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
        if not self.draft or img.format != "JPEG" or self.shortest:
            return 1
        fits = (s for s in (8, 4, 2) if min(snap(box, s)[2:]) // s >= self.size)
        return next(fits, 1)

    def read(self, img: Image.Image, rng: random.Random) -> tuple[np.ndarray, Box]:
        """The PIL half (in the decoding process): pick the box, decode (reduced when
        possible) -> (H', W', 3) uint8 array and the box in its pixels."""
        return self.decode(img, self.box(*img.size, rng))

    def decode(self, img: Image.Image, box: Box) -> tuple[np.ndarray, Box]:
        """Decode for ``box`` (reduced when possible) -> pixels and the box in their grid."""
        array, s = decode_reduced(img, self.reduction(img, box))
        return array, scale_box(box, s)

    def finish(self, decoded: tuple[np.ndarray, Box], rng: random.Random | None = None):
        return self.resize(*decoded)

    def resize(self, array: np.ndarray, box: Box) -> torch.Tensor:
        left, top, w, h = box
        pixels = torch.from_numpy(array)[top : top + h, left : left + w]  # (h, w, 3)
        pixels = pixels.permute(2, 0, 1).unsqueeze(0)  # (1, 3, h, w), channels-last strides
        if self.shortest:  # as transformers computes it: the long side truncated
            short, long = sorted((w, h))
            new_short = self.shortest_size()
            new_long = int(new_short * long / short)
            size = (new_long, new_short) if w <= h else (new_short, new_long)
            out = F.interpolate(pixels, size=size, mode="bicubic", antialias=True)
            top, left = (size[0] - self.size) // 2, (size[1] - self.size) // 2
            return out[0, :, top : top + self.size, left : left + self.size]  # (3, S, S)
        size = (self.size, self.size)
        out = F.interpolate(pixels, size=size, mode="bicubic", antialias=True)
        return out[0]  # (3, S, S) uint8, channels-last strides (the batch stack copies anyway)

    def __call__(self, img: Image.Image, rng: random.Random) -> torch.Tensor:
        return self.finish(self.read(img, rng), rng)


def decode_reduced(img: Image.Image, s: int) -> tuple[np.ndarray, int]:
    """(H, W, 3) uint8 RGB pixels, decoded at 1/``s`` size when ``s`` > 1 (JPEG DCT scaling);
    returns the reduction actually applied (1 if the image was already loaded)."""
    if s > 1:
        width, height = img.size
        img.draft("RGB", (width // s, height // s))
        if img.size == (width, height):  # no change if the image was already loaded
            s = 1
    return np.array(to_rgb(img)), s


def scale_box(box: Box, s: int) -> Box:
    """``box`` in the pixels of a 1/``s`` decode."""
    return box if s == 1 else tuple(v // s for v in snap(box, s))


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


def decode_image(data: bytes, transform, rng: random.Random, max_pixels: int = MAX_PIXELS):
    """Image bytes -> ``transform``'s output (a (3, S, S) uint8 tensor for :class:`CropResize`,
    K of them for a multi-view transform), or :class:`SkipSample` (``corrupt_image``,
    ``too_large``, ``transform_failed``)."""
    try:
        with open_image(data) as img:
            if max_pixels and img.size[0] * img.size[1] > max_pixels:
                raise SkipSample("too_large")
            decoded = transform.read(img, rng)
    except SkipSample:
        raise
    except Image.DecompressionBombError:  # PIL's own guard, past twice its pixel limit
        raise SkipSample("too_large") from None
    except Exception:  # noqa: BLE001 - PIL raises many types for corrupt files
        raise SkipSample("corrupt_image") from None
    try:
        return transform.finish(decoded, rng)
    except Exception:  # noqa: BLE001
        raise SkipSample("transform_failed") from None


def read_image_file(path: str | Path, missing: str = "missing_image") -> bytes:
    """The bytes of an image (or mask) file. A path that is not a regular file is skipped,
    never read (a link to ``/dev/zero`` named ``x.jpg`` would never end, a pipe would block): a
    broken link or absent file as ``missing``, a device, pipe or folder as ``not_a_file``; a
    file over ``MAX_FILE_BYTES`` as ``too_large``."""
    path = Path(path)
    if not path.is_file():
        raise SkipSample("not_a_file" if path.exists() else missing)
    if path.stat().st_size > MAX_FILE_BYTES:
        raise SkipSample("too_large")
    return path.read_bytes()
