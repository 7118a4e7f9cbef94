"""Per-view augmentations of the image-only objectives (SimCLR, MoCo, BYOL, ...) and their
presets from the papers.

A view is a random resized crop (``data.image.CropResize``, cut from the one decode that
``data.transforms.MultiView`` shares between views) followed by :class:`Augment` on the uint8
(3, S, S) tensor: horizontal flip, colour jitter (brightness, contrast, saturation, hue in a
random order, as torchvision's ``ColorJitter``), grayscale, Gaussian blur and solarisation. All
randomness is drawn from the sample's own ``rng`` (seeded by its position), first as plain
numbers (:meth:`Augment.sample`, which the tests check statistically), then applied, so a
resumed run repeats every view.

The settings and the papers' presets (``views.preset``) are in ``data/view_presets.py``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from vlcontrast.data.view_presets import PRESETS, ViewConfig, check_view  # noqa: F401


def gaussian_blur(image: torch.Tensor, side: int, sigma: float) -> torch.Tensor:
    """torchvision's ``gaussian_blur`` (same kernel, reflect padding, rounding to uint8) as two
    1-D passes: its 2-D kernel is the outer product of two 1-D ones, so the result is the same
    for 2·side instead of side² multiply-adds per pixel (17 ms -> about 1.5 ms for a 23-tap blur
    of a 224-px view on one core)."""
    half = (side - 1) * 0.5
    x = torch.linspace(-half, half, side)
    kernel = torch.softmax(-0.5 * (x / sigma) ** 2, dim=0)  # exp(...) / sum, (side,)
    channels = image.shape[-3]
    pixels = image.reshape(-1, channels, *image.shape[-2:]).float()
    pad = side // 2
    pixels = F.pad(pixels, [pad, pad, pad, pad], mode="reflect")
    rows = kernel.view(1, 1, 1, side).expand(channels, 1, 1, side)
    cols = kernel.view(1, 1, side, 1).expand(channels, 1, side, 1)
    pixels = F.conv2d(F.conv2d(pixels, rows, groups=channels), cols, groups=channels)
    return pixels.round_().clamp_(0, 255).to(torch.uint8).reshape(image.shape)


@dataclass
class Augment:
    """The augmentation of one view (after its crop), on a uint8 (3, S, S) tensor."""

    view: ViewConfig

    def sample(self, rng: random.Random) -> dict[str, Any]:
        """This view's random choices, as plain numbers."""
        v = self.view
        params: dict[str, Any] = {"flip": rng.random() < v.flip, "jitter": None}
        if rng.random() < v.jitter_p:
            b, c, s, h = v.jitter
            order = [0, 1, 2, 3]
            rng.shuffle(order)
            params["jitter"] = {
                "order": order,
                "brightness": rng.uniform(max(0.0, 1 - b), 1 + b),
                "contrast": rng.uniform(max(0.0, 1 - c), 1 + c),
                "saturation": rng.uniform(max(0.0, 1 - s), 1 + s),
                "hue": rng.uniform(-h, h),
            }
        params["grayscale"] = rng.random() < v.grayscale
        params["blur"] = rng.uniform(*v.blur_sigma) if rng.random() < v.blur else None
        params["solarize"] = rng.random() < v.solarize
        return params

    def apply(self, image: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        if params["flip"]:
            image = TF.horizontal_flip(image)
        jitter = params["jitter"]
        if jitter is not None:
            for op in jitter["order"]:
                if op == 0 and jitter["brightness"] != 1:
                    image = TF.adjust_brightness(image, jitter["brightness"])
                elif op == 1 and jitter["contrast"] != 1:
                    image = TF.adjust_contrast(image, jitter["contrast"])
                elif op == 2 and jitter["saturation"] != 1:
                    image = TF.adjust_saturation(image, jitter["saturation"])
                elif op == 3 and jitter["hue"] != 0:
                    image = TF.adjust_hue(image, jitter["hue"])
        if params["grayscale"]:
            image = TF.rgb_to_grayscale(image, num_output_channels=3)
        if params["blur"] is not None:
            side = max(3, int(self.view.blur_kernel * image.shape[-1]) // 2 * 2 + 1)
            image = gaussian_blur(image, side, params["blur"])
        if params["solarize"]:
            image = torch.where(image >= 128, 255 - image, image)
        return image

    def __call__(self, image: torch.Tensor, rng: random.Random) -> torch.Tensor:
        return self.apply(image, self.sample(rng))
