"""Per-view augmentation settings (``views.*``) and the papers' presets, without the code that
applies them (``data/augment.py``), so the configuration reads them without importing torch.

Presets (``views.preset``), each parameter overridable per view:
- ``simclr`` (Chen et al. 2020, appendix A): crop scale (0.08, 1), flip 0.5, jitter
  (0.8, 0.8, 0.8, 0.2) with p 0.8, grayscale 0.2, blur p 0.5 with sigma in (0.1, 2);
- ``mocov2`` ("aug+", Chen et al. 2020b): crop (0.2, 1), jitter (0.4, 0.4, 0.4, 0.1) p 0.8,
  grayscale 0.2, blur 0.5;
- ``byol`` (Grill et al. 2020, table 6) and ``mocov3`` (Chen et al. 2021): asymmetric, crop
  (0.08, 1), jitter (0.4, 0.4, 0.2, 0.1) p 0.8, grayscale 0.2; blur 1.0 / 0.1 and solarize
  0 / 0.2 for the first / second view;
- ``small``: 32-96 px data (SimCLR's CIFAR recipe): crop (0.08, 1), jitter strength 0.5, i.e.
  (0.4, 0.4, 0.4, 0.1) p 0.8, grayscale 0.2, no blur (blur destroys 32-px images).

Multi-crop (:class:`MultiCropConfig`, ``objective.swav.crops`` / ``objective.dino.crops``): 2
global crops at the training size and N local ones, each with its paper's augmentation:
- SwAV (``main_swav.py``): every crop flip 0.5, jitter (0.8, 0.8, 0.8, 0.2) p 0.8, grayscale
  0.2, blur p 0.5 with sigma in (0.1, 2); global scale (0.14, 1), local (0.05, 0.14);
- DINO (``main_dino.py``): jitter (0.4, 0.4, 0.2, 0.1) p 0.8, grayscale 0.2; blur 1.0 on the
  first global crop, 0.1 and solarisation 0.2 on the second, 0.5 on the local ones; global scale
  (0.4, 1), local (0.05, 0.4).
Local crops are 96 px of 224 in both papers; ``local_size: 0`` (the default) keeps that share
of ``image.image_size``, on a ViT's patch grid (:func:`fitted_local_size`), so a 32-px model's
local crops are 12 px, not three times its global ones.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from vlcontrast.schema import NON_NEGATIVE, between

PROBABILITY = between(0.0, 1.0)


@dataclass
class ViewConfig:
    """One view's crop and augmentation."""

    scale: list[float] = field(default_factory=lambda: [0.08, 1.0])  # crop area fraction range
    flip: float = field(default=0.5, metadata=PROBABILITY)  # horizontal flip probability
    # Colour jitter strengths: brightness, contrast, saturation (factor in [1-s, 1+s]), hue
    # (shift in [-h, h], h <= 0.5), applied together with probability jitter_p
    jitter: list[float] = field(default_factory=lambda: [0.4, 0.4, 0.4, 0.1])
    jitter_p: float = field(default=0.8, metadata=PROBABILITY)
    grayscale: float = field(default=0.2, metadata=PROBABILITY)
    blur: float = field(default=0.5, metadata=PROBABILITY)  # Gaussian blur probability
    blur_sigma: list[float] = field(default_factory=lambda: [0.1, 2.0])
    # blur kernel side as a fraction of the image side (SimCLR: 10%), made odd
    blur_kernel: float = field(default=0.1, metadata=NON_NEGATIVE)
    solarize: float = field(default=0.0, metadata=PROBABILITY)  # probability; threshold 128


SIMCLR = dict(scale=[0.08, 1.0], jitter=[0.8, 0.8, 0.8, 0.2], blur=0.5)
MOCOV2 = dict(scale=[0.2, 1.0], jitter=[0.4, 0.4, 0.4, 0.1], blur=0.5)
BYOL_1 = dict(scale=[0.08, 1.0], jitter=[0.4, 0.4, 0.2, 0.1], blur=1.0, solarize=0.0)
BYOL_2 = dict(scale=[0.08, 1.0], jitter=[0.4, 0.4, 0.2, 0.1], blur=0.1, solarize=0.2)
SMALL = dict(scale=[0.08, 1.0], jitter=[0.4, 0.4, 0.4, 0.1], blur=0.0)
PRESETS: dict[str, list[dict[str, Any]]] = {
    "simclr": [SIMCLR, SIMCLR],
    "mocov2": [MOCOV2, MOCOV2],
    "byol": [BYOL_1, BYOL_2],
    "mocov3": [BYOL_1, BYOL_2],
    "small": [SMALL, SMALL],
}


# Each two-view method's own paper's views, the preset a run gets when it names none; SimSiam
# and DenseCL took MoCo v2's, Barlow Twins BYOL's, SupCon and SLIP SimCLR's
METHOD_VIEWS = {
    "simclr": "simclr",
    "supcon": "simclr",
    "slip": "simclr",
    "moco": "mocov2",
    "simsiam": "mocov2",
    "densecl": "mocov2",
    "byol": "byol",
    "barlow_twins": "byol",
    "mocov3": "mocov3",
}
# ... and images of at most this many pixels a side get ``small`` instead (SimCLR's CIFAR
# recipe: a Gaussian blur of a 32-px image erases it)
SMALL_SIDE = 96


def method_views(method: str, image_size: int) -> str:
    """The ``views.preset`` a run of ``method`` at ``image_size`` px gets when it names none
    ("" for a method without two views)."""
    if method not in METHOD_VIEWS:
        return ""
    return "small" if image_size <= SMALL_SIDE else METHOD_VIEWS[method]


def check_view(view: ViewConfig, where: str) -> None:
    """Range checks that the field metadata cannot express (pairs and the jitter list)."""
    lo, hi = view.scale if len(view.scale) == 2 else (None, None)
    if lo is None or not 0 < lo <= hi <= 1:
        raise ValueError(
            f"{where}.scale: expected [lo, hi] with 0 < lo <= hi <= 1, got {view.scale}"
        )
    if len(view.jitter) != 4 or min(view.jitter) < 0 or view.jitter[3] > 0.5:
        raise ValueError(
            f"{where}.jitter: expected [brightness, contrast, saturation, hue], each >= 0 and "
            f"hue <= 0.5, got {view.jitter}"
        )
    if len(view.blur_sigma) != 2 or not 0 < view.blur_sigma[0] <= view.blur_sigma[1]:
        raise ValueError(
            f"{where}.blur_sigma: expected [lo, hi] with 0 < lo <= hi, got {view.blur_sigma}"
        )


@dataclass
class ViewGroup:
    """Views a task asks for, as a named group (lightly's ``MultiCropTransform``: crop sizes
    and counts): ``count`` crops of ``size`` px, view ``k`` augmented by ``augment[k]`` (the
    last entry repeats). Every view of every group is cut from one decode of the image; a batch
    carries the group as ``views[name]``, (B, count, 3, size, size) uint8."""

    name: str
    size: int
    count: int
    augment: list[ViewConfig] = field(default_factory=lambda: [ViewConfig()])

    def settings(self) -> list[ViewConfig]:
        """One augmentation per view."""
        return [self.augment[min(k, len(self.augment) - 1)] for k in range(self.count)]


@dataclass
class MultiCropConfig:
    """Multi-crop views (SwAV, section 3.2): 2 global crops at ``image.image_size`` and
    ``local_count`` local crops of ``local_size`` px, all cut from one decode, each augmented as
    its paper does. ``augment`` changes every crop's preset (``{flip: 0, blur: 0}`` for 32-px
    digits, where a mirror is another digit and blur erases strokes)."""

    global_scale: list[float] = field(default_factory=lambda: [0.14, 1.0])
    local_count: int = field(default=6, metadata=NON_NEGATIVE)  # SwAV: 2x224 + 6x96
    # 0: 96/224 of image.image_size on the patch grid (fitted_local_size); SwAV, DINO: 96 of 224
    local_size: int = field(default=0, metadata=NON_NEGATIVE)
    local_scale: list[float] = field(default_factory=lambda: [0.05, 0.14])
    augment: dict = field(default_factory=dict)  # ViewConfig keys applied to every crop


def multicrop(global_scale: list[float], local_count: int, local_scale: list[float]):
    """A ``field`` holding a method's multi-crop defaults (a fresh dataclass per config)."""
    return field(
        default_factory=lambda: MultiCropConfig(list(global_scale), local_count, 0, local_scale)
    )


LOCAL_SHARE = 96 / 224  # SwAV's and DINO's local crop against their global one


def vit_patch(model: str, model_kwargs: dict) -> int:
    """A timm ViT's patch size, from ``model_kwargs`` or the ``patchN`` of its name; 1 for
    anything else (a CNN takes crops of any size)."""
    if "patch_size" in model_kwargs:
        return int(model_kwargs["patch_size"])
    found = re.search(r"patch(\d+)", model)
    return int(found.group(1)) if found else 1


def fitted_local_size(image_size: int, patch: int = 1) -> int:
    """``local_size: 0``: :data:`LOCAL_SHARE` of ``image_size``, to the nearest multiple of
    ``patch`` (a ViT cuts only whole patches) and at least one: 96 at 224 for patches of 8,
    16 or 32, 98 for DINOv2's 14 (its own local size), 12 for a 32-px model of 4-px patches."""
    return max(patch, round(image_size * LOCAL_SHARE / patch) * patch)


SWAV_CROP = dict(jitter=[0.8, 0.8, 0.8, 0.2], blur=0.5)
DINO_JITTER = [0.4, 0.4, 0.2, 0.1]
# method -> (augmentation of the first and second global crop, of every local crop)
MULTICROP_PRESETS: dict[str, tuple[list[dict[str, Any]], dict[str, Any]]] = {
    "swav": ([SWAV_CROP, SWAV_CROP], SWAV_CROP),
    "dino": (
        [dict(jitter=DINO_JITTER, blur=1.0), dict(jitter=DINO_JITTER, blur=0.1, solarize=0.2)],
        dict(jitter=DINO_JITTER, blur=0.5),
    ),
}


def multicrop_groups(
    crops: MultiCropConfig, method: str, size: int, where: str, patch: int = 1
) -> list[ViewGroup]:
    """The ``global`` and ``local`` view groups of ``method``'s preset with ``crops``'
    sizes, scales and changes (``local_size: 0`` fitted to ``size`` and a ViT's ``patch``);
    ``where`` names the settings in error messages."""
    global_views, local_view = MULTICROP_PRESETS[method]
    known = set(ViewConfig.__dataclass_fields__) - {"scale"}
    unknown = sorted(set(crops.augment) - known)
    if unknown:
        raise ValueError(
            f"{where}.augment: unknown key(s) {', '.join(unknown)}; a crop takes "
            f"{', '.join(sorted(known))}"
        )

    def views(presets: list[dict[str, Any]], scale: list[float], name: str) -> list[ViewConfig]:
        out = [ViewConfig(**{**p, **crops.augment, "scale": list(scale)}) for p in presets]
        for k, view in enumerate(out):
            check_view(view, f"{where} ({name} crop {k})")
        return out

    groups = [ViewGroup("global", size, 2, views(global_views, crops.global_scale, "global"))]
    if crops.local_count:
        local = views([local_view], crops.local_scale, "local")
        local_size = crops.local_size or fitted_local_size(size, patch)
        groups.append(ViewGroup("local", local_size, crops.local_count, local))
    return groups
