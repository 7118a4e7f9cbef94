"""Image transforms: PIL image -> normalised float tensor (3, S, S).

Training uses a resize + centre crop by default: captions may name positions and sizes ("at the
top left", "a small ..."), which a random-resized crop would falsify. ``random_resized`` with a
mild scale range, as in OpenCLIP, is available for natural-image corpora.
"""

from __future__ import annotations

from collections.abc import Sequence

from torchvision import transforms as T


def image_transform(
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    crop: str = "center",
    scale: tuple[float, float] = (0.9, 1.0),
) -> T.Compose:
    interp = T.InterpolationMode.BICUBIC
    if crop == "random_resized":
        geometry = [T.RandomResizedCrop(size, scale=scale, interpolation=interp)]
    elif crop == "center":
        geometry = [T.Resize(size, interpolation=interp), T.CenterCrop(size)]
    else:
        raise ValueError(f"unknown crop {crop!r}: use center or random_resized")
    return T.Compose([*geometry, T.ToTensor(), T.Normalize(mean, std)])
