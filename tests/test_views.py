"""The augmented views of the image-only objectives: each preset's statistics over many samples
(crop area against torchvision's RandomResizedCrop, flip, jitter, grayscale, blur and solarize
rates and ranges), what each operation does to pixels, two different views from one decode that
a resumed run repeats, and the (B, 2, 3, S, S) batches the pipeline makes."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import tiny_overrides
from tests.data_helpers import batches
from vlcontrast import config as config_lib
from vlcontrast.data.augment import PRESETS, Augment, ViewConfig
from vlcontrast.data.bad_data import BadData
from vlcontrast.data.image import CropResize, decode_image
from vlcontrast.data.shards import DataPosition
from vlcontrast.train.data_setup import build_train_data, train_transform

N = 20000  # binomial std 0.0035 at p = 0.5: the 0.02-0.03 tolerances are 6 sigma


def draws(view: ViewConfig, n: int = N) -> list[dict]:
    rng = random.Random(0)
    return [Augment(view).sample(rng) for _ in range(n)]


def rate(values) -> float:
    return float(np.mean([bool(v) for v in values]))


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_each_preset_draws_its_papers_statistics(preset):
    for spec in PRESETS[preset]:
        view = ViewConfig(**spec)
        params = draws(view)
        assert rate(p["flip"] for p in params) == pytest.approx(0.5, abs=0.03)
        jittered = [p["jitter"] for p in params if p["jitter"]]
        assert len(jittered) / N == pytest.approx(0.8, abs=0.03)
        b, c, s, h = view.jitter
        for name, strength in (("brightness", b), ("contrast", c), ("saturation", s)):
            values = np.array([j[name] for j in jittered])
            assert values.min() >= 1 - strength - 1e-9 and values.max() <= 1 + strength + 1e-9
            assert values.mean() == pytest.approx(1.0, abs=0.03)  # uniform around 1
            assert values.max() - values.min() > 1.8 * strength  # the whole range is used
        hues = np.array([j["hue"] for j in jittered])
        assert np.abs(hues).max() <= h and hues.std() == pytest.approx(h / 3**0.5, rel=0.1)
        assert rate(p["grayscale"] for p in params) == pytest.approx(0.2, abs=0.02)
        assert rate(p["blur"] is not None for p in params) == pytest.approx(view.blur, abs=0.03)
        sigmas = [p["blur"] for p in params if p["blur"] is not None]
        assert not sigmas or (min(sigmas) >= 0.1 and max(sigmas) <= 2.0)
        assert rate(p["solarize"] for p in params) == pytest.approx(view.solarize, abs=0.02)
    if preset in ("byol", "mocov3"):  # asymmetric: blur 1.0 / 0.1, solarize 0 / 0.2
        first, second = (ViewConfig(**spec) for spec in PRESETS[preset])
        assert (first.blur, second.blur, first.solarize, second.solarize) == (1.0, 0.1, 0.0, 0.2)


@pytest.mark.parametrize("scale", [(0.08, 1.0), (0.2, 1.0)])
def test_the_crop_area_follows_torchvision_random_resized_crop(scale):
    from torchvision.transforms import RandomResizedCrop

    crop, rng = CropResize(64, "random_resized", scale), random.Random(0)
    ours = [w * h / (320 * 240) for _, _, w, h in (crop.box(320, 240, rng) for _ in range(N))]
    torch.manual_seed(0)
    image = torch.zeros(3, 240, 320)
    theirs = [
        h * w / (320 * 240)
        for _, _, h, w in (
            RandomResizedCrop.get_params(image, scale, (3 / 4, 4 / 3)) for _ in range(N)
        )
    ]
    assert min(ours) >= scale[0] - 0.01 and max(ours) <= 1.0
    for q in (0.1, 0.5, 0.9):
        assert np.quantile(ours, q) == pytest.approx(np.quantile(theirs, q), abs=0.03)


def test_each_operation_does_what_it_says_to_the_pixels():
    gen = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=gen)
    off = {"flip": False, "jitter": None, "grayscale": False, "blur": None, "solarize": False}
    augment = Augment(ViewConfig())
    assert torch.equal(augment.apply(image, off), image)
    assert torch.equal(augment.apply(image, {**off, "flip": True}), image.flip(-1))
    gray = augment.apply(image, {**off, "grayscale": True})
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    solar = augment.apply(image, {**off, "solarize": True})
    assert torch.equal(solar, torch.where(image >= 128, 255 - image, image))
    blurred = augment.apply(image, {**off, "blur": 2.0}).float()
    assert blurred.diff(dim=-1).abs().mean() < 0.5 * image.float().diff(dim=-1).abs().mean()
    bright = augment.apply(
        image,
        {
            **off,
            "jitter": {
                "order": [0, 1, 2, 3],
                "brightness": 0.5,
                "contrast": 1,
                "saturation": 1,
                "hue": 0,
            },
        },
    )
    assert float(bright.float().mean()) == pytest.approx(
        0.5 * float(image.float().mean()), rel=0.02
    )
    assert image.dtype == bright.dtype == torch.uint8


def jpeg(side=96) -> bytes:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def test_two_views_of_one_image_differ_and_the_same_seed_repeats_them(corpus, tmp_path):
    overrides = [
        *tiny_overrides(corpus, tmp_path),
        "model.kind=image",
        "objective.name=simclr",
        "views.preset=simclr",
    ]
    cfg = config_lib.load(None, overrides)
    transform = train_transform(cfg)
    views = decode_image(jpeg(), transform, random.Random(7))
    again = decode_image(jpeg(), transform, random.Random(7))
    other = decode_image(jpeg(), transform, random.Random(8))
    assert views.shape == (2, 3, 32, 32) and views.dtype == torch.uint8
    assert torch.equal(views, again) and not torch.equal(views[0], views[1])
    assert not torch.equal(views, other)
    dataset, _ = build_train_data(cfg, None)
    (batch,) = batches(dataset, 0, DataPosition(), 1, BadData())
    assert batch["images"].shape == (16, 2, 3, 32, 32) and "input_ids" not in batch


def test_a_bad_view_setting_names_its_key(corpus, tmp_path):
    overrides = [
        *tiny_overrides(corpus, tmp_path),
        "model.kind=image",
        "objective.name=simclr",
        "views.preset=simclr",
        "views.second.scale=[0.5, 0.2]",
    ]
    with pytest.raises(config_lib.ConfigError, match=r"views.second.scale: expected \[lo, hi\]"):
        train_transform(config_lib.load(None, overrides))
    with pytest.raises(config_lib.ConfigError, match="views.preset"):
        config_lib.load(None, ["views.preset=dino"])
    with pytest.raises(config_lib.ConfigError, match="views.first.flip"):
        config_lib.load(None, ["views.first.flip=1.5"])


@pytest.mark.parametrize("side, sigma", [(23, 1.0), (23, 2.0), (9, 0.5), (3, 0.1)])
def test_the_separable_blur_equals_torchvisions_gaussian_blur(side, sigma):
    from torchvision.transforms.v2 import functional as TF

    from vlcontrast.data.augment import gaussian_blur

    gen = torch.Generator().manual_seed(side)
    image = torch.randint(0, 256, (3, 40, 48), dtype=torch.uint8, generator=gen)
    ours, theirs = (
        gaussian_blur(image, side, sigma),
        TF.gaussian_blur(image, [side] * 2, [sigma] * 2),
    )
    assert ours.dtype == torch.uint8 and ours.shape == image.shape
    assert (ours.int() - theirs.int()).abs().max() <= 1  # float rounding of the same sums
    assert (ours != theirs).float().mean() < 1e-3


@pytest.mark.parametrize(
    ("method", "paper"),
    [
        ("simclr", "simclr"),
        ("moco", "mocov2"),
        ("mocov3", "mocov3"),
        ("byol", "byol"),
        ("simsiam", "mocov2"),  # SimSiam's code: MoCo v2's augmentation
        ("barlow_twins", "byol"),  # Barlow Twins: BYOL's asymmetric blur and solarisation
        ("supcon", "simclr"),
        ("densecl", "mocov2"),
    ],
)
def test_a_method_that_names_no_views_gets_its_papers(method, paper, capsys):
    """Without ``views.preset`` a two-view method trains on its paper's views (before, every
    method got one generic pair: BYOL without its asymmetric blur and solarisation), on
    SimCLR's small-image recipe at 96 px or less, each with a note; a preset or a per-view key
    the user gives wins."""
    base = ["model.kind=image", f"objective.name={method}"]
    cfg = config_lib.load(None, base)
    want = [ViewConfig(**{**ViewConfig().__dict__, **v}) for v in PRESETS[paper]]
    assert cfg.views.preset == paper and [cfg.views.first, cfg.views.second] == want
    assert f"note: views.preset={paper} ({method}'s paper's views" in capsys.readouterr().err
    small = config_lib.load(None, [*base, "image.image_size=32"])
    assert small.views.preset == "small" and small.views.first.blur == 0
    assert config_lib.load(None, [*base, "model.preset=tiny"]).views.preset == "small"
    assert config_lib.load(None, [*base, "views.preset=simclr"]).views.preset == "simclr"
    generic = config_lib.load(None, [*base, "views.preset="])  # "" keeps the generic pair
    assert generic.views.preset == "" and generic.views.first == ViewConfig()
    changed = config_lib.load(None, [*base, "views.second.flip=0"])
    assert changed.views.second.flip == 0 and changed.views.first == want[0]


def test_image_text_objectives_get_no_view_preset(capsys):
    for name in ("clip", "siglip", "swav", "dino"):
        assert config_lib.load(None, [f"objective.name={name}"]).views.preset == ""
    assert "views.preset" not in capsys.readouterr().err
