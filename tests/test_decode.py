"""Decoding: every image mode to RGB, reduced-size JPEG decoding against a full decode, sizes."""

import io
import json
import random

import numpy as np
import pytest
import torch
from PIL import Image

from vlcontrast.data.decode import Decoder
from vlcontrast.data.image import CropResize, snap, to_rgb
from vlcontrast.data.shard_writer import write_shards
from vlcontrast.data.skip import SkipSample
from vlcontrast.data.sources import dataset_size, expand_urls

WHITE, RED = (255, 255, 255), (200, 30, 30)


def encoded(img: Image.Image, fmt: str) -> Image.Image:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt)
    return Image.open(io.BytesIO(buffer.getvalue()))


def rgba_red_and_clear() -> Image.Image:
    img = Image.new("RGBA", (4, 2), (*RED, 255))
    img.putpixel((0, 0), (0, 0, 0, 0))  # transparent black: shows as white, not black
    return img


@pytest.mark.parametrize(
    "make, fmt, want",
    [
        (lambda: Image.new("L", (4, 2), 77), "PNG", (77, 77, 77)),
        (lambda: Image.new("L", (4, 2), 77), "JPEG", (77, 77, 77)),
        (lambda: Image.new("CMYK", (4, 2), (0, 255, 255, 0)), "JPEG", (255, 0, 0)),
        (lambda: Image.new("RGB", (4, 2), RED).convert("P", palette=Image.ADAPTIVE), "PNG", RED),
        (lambda: Image.new("RGB", (4, 2), RED), "WEBP", RED),
        (lambda: Image.new("I;16", (4, 2), 0x8080), "PNG", (128, 128, 128)),
        (lambda: Image.new("LA", (4, 2), (77, 0)), "PNG", WHITE),
        (rgba_red_and_clear, "PNG", RED),
    ],
)
def test_every_mode_becomes_rgb(make, fmt, want):
    rgb = to_rgb(encoded(make(), fmt))
    assert rgb.mode == "RGB"
    pixel = np.asarray(rgb)[1, 3].astype(int)
    assert np.abs(pixel - np.array(want)).max() <= 6  # JPEG/WEBP are lossy
    if make is rgba_red_and_clear:
        assert tuple(np.asarray(rgb)[0, 0]) == WHITE


def test_palette_transparency_composites_on_white():
    img = Image.new("P", (2, 1))
    img.putpalette([0, 0, 0, *RED])
    img.putpixel((1, 0), 1)
    img.info["transparency"] = 0
    rgb = to_rgb(encoded(img, "PNG"))
    assert tuple(np.asarray(rgb)[0, 0]) == WHITE and tuple(np.asarray(rgb)[0, 1]) == RED


def photo_like(width: int, height: int) -> bytes:
    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, (height // 24 + 1, width // 24 + 1, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((width, height), Image.BICUBIC)
    noise = rng.integers(-4, 5, (height, width, 3))
    pixels = (np.asarray(img).astype(int) + noise).clip(0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.double() - b.double()).pow(2).mean().item()
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def test_reduced_jpeg_decode_matches_a_full_decode_on_the_same_box():
    """The DCT-scaled decode (1/4 here) against a full decode + PIL bicubic of the same box."""
    data = photo_like(1200, 900)
    transform = CropResize(112, "random_resized")
    for seed in range(3):
        with Image.open(io.BytesIO(data)) as img:
            box = transform.box(*img.size, random.Random(seed))
            scale = transform.reduction(img, box)
            fast = transform.resize(*transform.decode(img, box))
        assert scale >= 4
        left, top, w, h = snap(box, scale)
        full = Image.open(io.BytesIO(data)).convert("RGB")
        ref = full.resize((112, 112), Image.BICUBIC, box=(left, top, left + w, top + h))
        ref = torch.from_numpy(np.asarray(ref).copy()).permute(2, 0, 1)
        assert psnr(fast, ref) > 35


@pytest.mark.parametrize("reduced", [True, False])
def test_a_jpeg_cut_in_its_scan_data_is_a_corrupt_image(reduced):
    # The decoder gets the whole file in one read: running out of data mid-scan must still fail.
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    data = buffer.getvalue()
    size = 64 if reduced else 400
    decode = Decoder(CropResize(size))
    raw = {"__key__": "k", "__url__": "u", "txt": b"a caption"}
    assert decode({**raw, "jpg": data}, random.Random(0))["image"].shape == (3, size, size)
    with pytest.raises(SkipSample) as skip:
        decode({**raw, "jpg": data[: len(data) // 2]}, random.Random(0))
    assert skip.value.reason == "corrupt_image"


def test_full_size_path_matches_pil_bicubic():
    data = photo_like(300, 200)
    transform = CropResize(64, "center", draft=False)
    with Image.open(io.BytesIO(data)) as img:
        fast = transform(img, random.Random(0))
    ref = (
        Image.open(io.BytesIO(data))
        .convert("RGB")
        .resize((64, 64), Image.BICUBIC, box=(50, 0, 250, 200))
    )
    ref = torch.from_numpy(np.asarray(ref).copy()).permute(2, 0, 1)
    assert fast.dtype == torch.uint8 and psnr(fast, ref) > 45


def test_dataset_size_from_each_source(tmp_path, monkeypatch):
    monkeypatch.setenv("VLCONTRAST_CACHE", str(tmp_path / "cache"))
    samples = [{"__key__": f"k{i}", "txt": "x", "jpg": b"."} for i in range(10)]
    write_shards(samples, tmp_path / "a", per_shard=4)  # 4 + 4 + 2, with sizes.json
    urls = expand_urls(str(tmp_path / "a" / "{00000..00002}.tar"))
    assert dataset_size(urls) == (10, "sizes.json")
    assert dataset_size(urls, num_samples=7) == (7, "data.num_samples")
    (tmp_path / "a" / "sizes.json").unlink()
    for i, n in enumerate([4, 4, 2]):  # what img2dataset writes beside each shard
        (tmp_path / "a" / f"{i:05d}_stats.json").write_text(json.dumps({"successes": n}))
    assert dataset_size(urls) == (10, "_stats.json")
    (tmp_path / "a" / "00001_stats.json").unlink()
    size, how = dataset_size(urls, progress=False)
    assert size == 10 and how.startswith("counted")
    assert dataset_size(urls, progress=False)[1].startswith("cached count")


@pytest.mark.parametrize("shortest", [False, True])
def test_eval_crop_is_imagenets_resize_256_centre_224(shortest):
    """``fraction`` 0.875 (``image.eval_crop``) gives the evaluation transform of DINO's, MoCo's
    and SwAV's published figures, torchvision's Resize(256, bicubic) + CenterCrop(224), on a
    non-square image: either order (cut the centred 7/8 then resize, or resize the shortest
    side to 256 then cut) sees the same pixels."""
    from torchvision import transforms

    data = photo_like(600, 512)
    reference = transforms.Compose(
        [transforms.Resize(256, transforms.InterpolationMode.BICUBIC), transforms.CenterCrop(224)]
    )
    with Image.open(io.BytesIO(data)) as img:
        ref = np.asarray(reference(img.convert("RGB"))).copy()
    ref = torch.from_numpy(ref).permute(2, 0, 1)
    transform = CropResize(224, "center", draft=False, shortest_side=shortest, fraction=0.875)
    with Image.open(io.BytesIO(data)) as img:
        ours = transform(img, random.Random(0))
    assert ours.shape == (3, 224, 224) and psnr(ours, ref) > 60  # 70.8 dB cut first; equal
    whole = CropResize(224, "center", draft=False, shortest_side=shortest)
    with Image.open(io.BytesIO(data)) as img:
        assert psnr(whole(img, random.Random(0)), ref) < 25  # the whole square is other pixels
    assert CropResize(224, fraction=0.875).box(600, 512, random.Random(0)) == (76, 32, 448, 448)
