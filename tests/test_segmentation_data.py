"""``vlcontrast data segmentation``: a VOC-style pair of folders (JPEG images, palette masks, an
ID list) becomes shards whose masks read back as the labels drawn, with bad pairs skipped and
counted by reason, and a bad flag one clear error before anything is written."""

from __future__ import annotations

import io
import json

import numpy as np
import torch
from PIL import Image

from vlcontrast import cli
from vlcontrast.data.image import CropResize
from vlcontrast.data.synthetic import masked_samples
from vlcontrast.eval import dense_knn as dk

PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (256 * 3 - 9)


def palette_png(labels: np.ndarray) -> Image.Image:
    image = Image.fromarray(labels).convert("P")
    image.putpalette(PALETTE)
    return image


def voc_folders(root):
    """6 JPEGs of the demo's shapes; palette masks of their labels for 4, a colour-coded mask,
    a mask of another size; an ID list that also names an ID with no image."""
    images, masks = root / "JPEGImages", root / "SegmentationClass"
    images.mkdir(parents=True)
    masks.mkdir()
    labels = {}
    for i, sample in enumerate(masked_samples(6, seed=5)):
        name = f"2007_{i:06d}"
        (images / f"{name}.jpg").write_bytes(sample["jpg"])
        label = np.array(Image.open(io.BytesIO(sample["mask.png"])))
        if i < 4:
            palette_png(label).save(masks / f"{name}.png")
            labels[name] = label
        elif i == 4:
            Image.new("RGB", (64, 64), (128, 0, 0)).save(masks / f"{name}.png")
        else:
            Image.new("L", (32, 32)).save(masks / f"{name}.png")
    assert Image.open(masks / "2007_000000.png").mode == "P"  # VOC's kind: palette indices
    ids = root / "train.txt"
    ids.write_text("\n".join([*sorted(labels), "2007_000004", "2007_000005", "2007_999999"]))
    return images, masks, ids, labels


def test_voc_style_folders_become_shards_the_dense_evaluators_read(tmp_path, capsys):
    images, masks, ids, labels = voc_folders(tmp_path / "voc")
    classes = tmp_path / "classes.txt"
    classes.write_text("background\ncircle\nsquare\ntriangle\nstar\ncross\n")
    out = tmp_path / "shards"
    args = ["data", "segmentation", "--images", str(images), "--masks", str(masks)]
    args += ["--out", str(out), "--ids", str(ids), "--classes", str(classes)]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert (
        "4 image/mask pairs in 1 shard(s)" in printed
        and "next: vlcontrast eval dense-knn" in printed
    )
    assert "'missing_image': 1" in printed and "'mask_not_one_channel': 1" in printed
    assert "'mask_size_mismatch': 1" in printed
    assert json.loads((out / "classes.json").read_text())[:2] == ["background", "circle"]
    read = dk.read_masked(str(out / "00000.tar"), CropResize(64, "center"))
    assert read["skipped"] == {}
    for mask, name in zip(read["masks"], sorted(labels), strict=True):
        assert torch.equal(mask, torch.from_numpy(labels[name]))


def test_every_mask_under_the_folder_without_an_id_list(tmp_path, capsys):
    images, masks, _, labels = voc_folders(tmp_path / "voc")
    assert (
        cli.main(
            [
                "data",
                "segmentation",
                "--images",
                str(images),
                "--masks",
                str(masks),
                "--out",
                str(tmp_path / "s"),
                "--per-shard",
                "3",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "4 image/mask pairs in 2 shard(s)" in printed and "{00000..00001}.tar" in printed
    assert "missing_image" not in printed  # only the masks present are read


def test_bad_flags_are_one_message_and_nothing_written(tmp_path, capsys):
    images, masks, _, _ = voc_folders(tmp_path / "voc")
    out = tmp_path / "out"
    base = ["data", "segmentation", "--images", str(images), "--masks", str(masks), "--out"]
    assert cli.main([*base, str(out), "--ids", str(tmp_path / "nope.txt")]) == 2
    assert "--ids: no file" in capsys.readouterr().err
    assert (
        cli.main(
            [
                "data",
                "segmentation",
                "--images",
                str(tmp_path / "x"),
                "--masks",
                str(masks),
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert "--images: no folder" in capsys.readouterr().err
    assert not out.exists()
    jpeg_masks = tmp_path / "jpeg_masks"  # lossy masks: refused, with what was found
    jpeg_masks.mkdir()
    Image.new("L", (64, 64)).save(jpeg_masks / "2007_000000.jpg")
    assert cli.main([*base[:3], str(images), "--masks", str(jpeg_masks), "--out", str(out)]) == 2
    assert "--masks: no .png mask under" in capsys.readouterr().err
    assert not out.exists()
    ids = tmp_path / "ids.txt"  # an ID list none of whose masks exist: counted skips
    ids.write_text("nothing_here\n")
    assert cli.main([*base, str(out), "--ids", str(ids)]) == 1
    assert "no pair of an image and a mask" in capsys.readouterr().err


def test_reduce_zero_label_ignores_other_and_shifts_the_rest(tmp_path, capsys):
    """ADE20K's convention: 0 -> 255 (ignored), k -> k - 1, 255 stays 255."""
    images, masks = tmp_path / "images", tmp_path / "annotations"
    images.mkdir()
    masks.mkdir()
    Image.new("RGB", (16, 8), (90, 90, 90)).save(images / "ADE_1.jpg")
    labels = np.array([[0, 1, 2, 150, 255, 7, 7, 0]] * 8, dtype=np.uint8)
    labels = np.concatenate([labels, labels], axis=1)
    Image.fromarray(labels).save(masks / "ADE_1.png")
    out = tmp_path / "shards"
    args = ["data", "segmentation", "--images", str(images), "--masks", str(masks)]
    assert cli.main([*args, "--out", str(out), "--reduce-zero-label"]) == 0
    capsys.readouterr()
    from vlcontrast.data.tar_reader import iter_samples

    (sample,) = list(iter_samples(str(out / "00000.tar"), print))
    got = np.asarray(Image.open(io.BytesIO(sample["mask.png"])))
    want = np.where((labels == 0) | (labels == 255), 255, labels.astype(int) - 1)
    assert np.array_equal(got, want) and json.loads(sample["json"])["id"] == "ADE_1"
