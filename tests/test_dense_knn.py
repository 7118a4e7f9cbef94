"""Dense kNN (eval/dense_knn.py) and its synthetic masked set (data/synthetic.py): masks line up
with the shapes drawn, patch majority labels and segmentation metrics against loops written
here, the whole evaluator against its result computed by hand for oracle features, skips
counted by reason, and ``vlcontrast data masks`` + ``vlcontrast eval dense-knn`` end to end."""

from __future__ import annotations

import io
import json
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from tests.distributed_dense_case import PatchConv
from vlcontrast import cli
from vlcontrast.data.image import CropResize
from vlcontrast.data.shard_writer import write_shards
from vlcontrast.data.synthetic import (
    GROUND,
    MASK_CLASSES,
    ONE_COLOUR,
    ONE_COLOUR_NAME,
    _polygon,
    masked_samples,
    render_scene,
    samples,
)
from vlcontrast.data.tar_reader import iter_samples
from vlcontrast.eval import dense_knn as dk


def test_masks_mark_the_shape_drawn_and_the_images_are_the_demos():
    sample = next(masked_samples(1, seed=3))
    image = np.asarray(Image.open(io.BytesIO(sample["jpg"])).convert("RGB"), dtype=float)
    mask = np.asarray(Image.open(io.BytesIO(sample["mask.png"])))
    shape = MASK_CLASSES[int(mask.max())]
    assert set(np.unique(mask)) == {0, MASK_CLASSES.index(shape)}
    inside, outside = image[mask > 0].max(axis=1), image[mask == 0].max(axis=1)
    assert inside.mean() > outside.mean() + 80  # bright shapes on a dark, cluttered ground
    assert f" {shape}" in sample["txt"]
    # the demo corpus draws the same images it always did (the mask rides along)
    plain = next(samples(1, seed=3))
    assert plain["txt"] == sample["txt"] and plain["cls"] == sample["cls"]


def test_scenes_mask_every_shape_drawn_with_later_shapes_on_top():
    """``objects=3`` scenes: the mask equals the shapes redrawn here one by one in order (a
    later one hides an earlier one), the text names them, and every shape pixel is bright
    against the dark ground."""
    mask = Image.new("L", (64, 64), 0)
    image, drawn = render_scene(random.Random(7), 3, 64, mask)
    plain, again = render_scene(random.Random(7), 3, 64)
    assert again == drawn and plain.tobytes() == image.tobytes()  # the mask changes no draw
    want = np.zeros((64, 64), dtype=np.uint8)
    for shape in drawn:
        alone = Image.new("L", (64, 64), 0)
        canvas, (cx, cy, r) = ImageDraw.Draw(alone), shape["centre"] + (shape["radius"],)
        if shape["shape"] == "circle":
            canvas.ellipse((cx - r, cy - r, cx + r, cy + r), fill=1)
        else:
            canvas.polygon(_polygon(shape["shape"], cx, cy, r, shape["angle"]), fill=1)
        want[np.asarray(alone) > 0] = MASK_CLASSES.index(shape["shape"])
    assert np.array_equal(np.asarray(mask), want)
    sample = next(masked_samples(1, seed=7, objects=3))
    mask = np.asarray(Image.open(io.BytesIO(sample["mask.png"])))
    named = [part.split()[-1] for part in sample["txt"].split(", ")]
    assert len(named) == 3 and "cls" not in sample
    assert {MASK_CLASSES[v] for v in np.unique(mask) if v} <= set(named)
    pixels = np.asarray(Image.open(io.BytesIO(sample["jpg"])).convert("RGB"), dtype=float)
    assert pixels[mask > 0].max(axis=1).mean() > pixels[mask == 0].max(axis=1).mean() + 80


@pytest.mark.parametrize("objects", [1, 3])
def test_one_colour_images_differ_by_their_shapes_only(objects):
    """``one_colour``: every shape's pixels are ONE_COLOUR and the ground GROUND (give or take
    the fill's +-20 and JPEG), where the default draws shapes of many colours on many grounds;
    the masks and texts still name the shapes."""
    medians = {}
    for one_colour in (False, True):
        found, yellow = [], []
        for sample in masked_samples(30, seed=5, objects=objects, one_colour=one_colour):
            mask = np.asarray(Image.open(io.BytesIO(sample["mask.png"])))
            pixels = np.asarray(Image.open(io.BytesIO(sample["jpg"])).convert("RGB"), float)
            found.append((np.median(pixels[mask > 0], 0), np.median(pixels[mask == 0], 0)))
            words = set(sample["txt"].replace(",", "").split())
            assert {MASK_CLASSES[v] for v in np.unique(mask) if v} <= words
            yellow += [ONE_COLOUR_NAME in part.split() for part in sample["txt"].split(", ")]
        assert all(yellow) == one_colour
        medians[one_colour] = np.array(found)  # (images, shape / ground, RGB)
    one = medians[True]
    assert np.abs(one[:, 0] - ONE_COLOUR).max() < 30 and np.abs(one[:, 1] - GROUND).max() < 12
    assert one.std(axis=0).max() < 15  # one colour (+-20 uniform: std 11.5), one ground ...
    assert medians[False].std(axis=0).min() > 15  # ... where the default varies both


def test_patch_labels_are_the_majority_of_their_pixels():
    gen = torch.Generator().manual_seed(0)
    masks = torch.randint(0, 3, (2, 8, 8), generator=gen)
    masks[0, :4, :4] = dk.IGNORE  # a patch of ignored pixels
    got = dk.patch_labels(masks, (2, 2), 3)
    for n in range(2):
        for i in range(2):
            for j in range(2):
                block = masks[n, 4 * i : 4 * i + 4, 4 * j : 4 * j + 4].flatten().tolist()
                counts = [block.count(c) for c in range(3)] + [block.count(dk.IGNORE)]
                best = max(range(4), key=lambda c: (counts[c], -c))
                assert got[n, i, j] == (-1 if best == 3 else best)


def test_patch_labels_equal_the_arg_max_of_pooled_one_hots_on_uneven_grids():
    """Over several chunks of masks, on a grid that does not divide the mask (overlapping
    adaptive bins), with a label past the classes and ignored pixels: the same labels as the
    arg max of adaptive-average-pooled one-hots (the ignored share as the last column)."""
    gen = torch.Generator().manual_seed(1)
    masks = torch.randint(0, 5, (70, 10, 10), generator=gen, dtype=torch.uint8)
    masks[masks == 4] = dk.IGNORE
    masks[3, :5, :5] = 7  # past the 4 classes: ignored as 255 is
    got = dk.patch_labels(masks, (3, 3), 4)
    m = masks.long()
    onehot = F.one_hot(torch.where(m < 4, m, 4), 5).float().permute(0, 3, 1, 2)
    best = F.adaptive_avg_pool2d(onehot, (3, 3)).argmax(dim=1)
    assert torch.equal(got, torch.where(best == 4, -1, best))
    assert (got == -1).any() and got.shape == (70, 3, 3)


def test_segmentation_metrics_are_iou_and_accuracy():
    masks = torch.tensor([[[0, 0, 1, 1], [0, 2, 2, dk.IGNORE]]])
    pred = torch.tensor([[[0, 1, 1, 1], [0, 2, 0, 0]]])
    result = dk.segmentation_metrics(pred, masks, ["a", "b", "c", "d"])
    # a: tp 2, fp 1, fn 1 -> 2/4; b: tp 2, fp 1 -> 2/3; c: tp 1, fn 1 -> 1/2; d absent
    assert result["per_class_iou"] == pytest.approx({"a": 0.5, "b": 2 / 3, "c": 0.5})
    assert result["metrics"]["miou"] == pytest.approx((0.5 + 2 / 3 + 0.5) / 3)
    assert result["metrics"]["pixel_accuracy"] == pytest.approx(5 / 7)


def test_oracle_features_give_the_patch_majority_labels_spread_over_the_pixels(masked, monkeypatch):
    """With each patch's feature the one-hot of its majority label, the vote returns that
    label; the result equals upsampling the held-out patch labels by hand."""
    transform = CropResize(64, "center")
    grid = (8, 8)

    def oracle(model, images, device, batch_size=64):
        masks = next(m for m in cache if len(m) == len(images))
        labels = dk.patch_labels(masks, grid, 6)
        return F.one_hot(labels.clamp(min=0), 6).float()

    train = dk.read_masked(masked["train"], transform)
    test = dk.read_masked(masked["heldout"], transform)
    cache = [train["masks"], test["masks"]]
    monkeypatch.setattr(dk, "patch_features", oracle)
    spec = SimpleNamespace(
        train_data=masked["train"],
        data=masked["heldout"],
        max_samples=0,
        k=5,
        temperature=0.1,
        classes="",
    )
    result = dk.dense_knn(torch.nn.Identity(), "cpu", transform, spec)
    want_patches = dk.patch_labels(test["masks"], grid, 6)
    pixels = want_patches.repeat_interleave(8, 1).repeat_interleave(8, 2)
    want = dk.segmentation_metrics(pixels, test["masks"], MASK_CLASSES)
    assert result["metrics"]["miou"] == pytest.approx(want["metrics"]["miou"])
    assert result["metrics"]["miou"] > 0.6 and result["classnames"] == MASK_CLASSES
    assert result["metrics"]["patches"] == 40 * 64
    examples = result["examples"]  # the first held-out images with their predictions
    assert torch.equal(examples["pred"], pixels[: dk.EXAMPLES].to(torch.uint8))
    assert torch.equal(examples["masks"], test["masks"][: dk.EXAMPLES])
    assert torch.equal(examples["images"], test["images"][: dk.EXAMPLES])


def test_examples_png_shows_image_truth_and_prediction_in_voc_colours(tmp_path):
    from vlcontrast.eval.report import class_colour, save_segmentation_png

    voc = {0: (0, 0, 0), 1: (128, 0, 0), 2: (0, 128, 0), 15: (192, 128, 128), 255: (255,) * 3}
    assert {label: class_colour(label) for label in voc} == voc  # VOC devkit's colours
    images = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    images[:, 1] = 200  # green images
    masks = torch.zeros(2, 32, 32, dtype=torch.uint8)
    masks[:, :16] = 1
    masks[1, :, 30:] = 255
    pred = torch.full((2, 32, 32), 2, dtype=torch.uint8)
    path = tmp_path / "examples.png"
    examples = {"images": images, "masks": masks, "pred": pred}
    save_segmentation_png(examples, ["bg", "cat", "dog"], path, "dense_knn")
    sheet = Image.open(path).convert("RGB")
    tile, gap, top = 96, 6, 36  # 32 px enlarged 3x to reach 96
    assert sheet.size[0] >= 3 * tile + 4 * gap
    second_row = top + tile + gap
    at = lambda column, x, y: sheet.getpixel((gap + column * (tile + gap) + x, y))  # noqa: E731
    assert at(0, 5, top + 5) == (0, 200, 0)  # the image
    assert at(1, 5, top + 5) == (128, 0, 0) and at(1, 5, top + 80) == (0, 0, 0)  # truth
    assert at(1, 94, second_row + 80) == (255, 255, 255)  # ignored
    assert at(1, 94, top + 80) == (0, 0, 0)  # the first image's last columns are labelled
    assert at(2, 50, second_row + 50) == (0, 128, 0)  # predicted: all class 2


def test_features_stream_in_batches_as_one_pass_with_uint8_masks(masked):
    """Reading and encoding 5 images at a time keeps only features and masks, and gives the
    features of encoding every image at once; masks are uint8 (a class index a byte) and
    ``max_samples`` stops the reading."""
    model, transform = PatchConv(), CropResize(32, "center")
    whole = dk.read_masked(masked["train"], transform)
    want = dk.patch_features(model, whole["images"], "cpu", batch_size=64)
    got = dk.masked_features(model, "cpu", transform, masked["train"], batch_size=5)
    assert got["feat"].shape == (40, 8, 8, 8)
    assert torch.allclose(got["feat"], want, atol=1e-6)
    assert got["masks"].dtype == torch.uint8 and torch.equal(got["masks"], whole["masks"])
    cut = dk.masked_features(model, "cpu", transform, masked["train"], 7, batch_size=5)
    assert len(cut["feat"]) == 7 and torch.equal(cut["masks"], whole["masks"][:7])


def test_bad_samples_are_skipped_and_counted(tmp_path):
    good = next(masked_samples(1, seed=1))
    small_mask = io.BytesIO()
    Image.new("L", (32, 32)).save(small_mask, format="PNG")
    rows = [
        good,
        {"__key__": "nomask", "jpg": good["jpg"]},
        {"__key__": "size", "jpg": good["jpg"], "mask.png": small_mask.getvalue()},
        {"__key__": "badmask", "jpg": good["jpg"], "mask.png": b"not a png"},
        {"__key__": "badimg", "jpg": b"not a jpeg", "mask.png": good["mask.png"]},
    ]
    write_shards(iter(rows), tmp_path, per_shard=10)
    out = dk.read_masked(str(tmp_path / "00000.tar"), CropResize(32, "center"))
    assert len(out["images"]) == 1 and out["masks"].shape == (1, 32, 32)
    assert out["skipped"] == {
        "missing_mask": 1,
        "mask_size_mismatch": 1,
        "corrupt_mask": 1,
        "corrupt_image": 1,
    }


def png(array: np.ndarray, mode: str | None = None) -> bytes:
    out = io.BytesIO()
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(out, format="PNG")
    return out.getvalue()


def jpeg_bytes(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="JPEG")
    return out.getvalue()


def test_masks_in_other_png_modes_read_as_class_indices_or_skip_by_reason(tmp_path):
    """The same labels as 8-bit grey, palette, 16-bit, grey saved as RGB and 1-bit (labels 0
    and 1) read as those labels; a colour-coded mask, a 16-bit label over 255 and a JPEG (its
    compression noise moves labels along the edges) are skipped and counted, never read as
    other labels."""
    good = next(masked_samples(1, seed=1))
    labels = np.zeros((64, 64), np.uint8)
    labels[10:30, 20:50], labels[40:, :8] = 3, 255
    binary = (labels == 3).astype(np.uint8)
    colour = np.zeros((64, 64, 3), np.uint8)
    colour[10:30, 20:50] = (200, 10, 10)
    over = labels.astype(np.uint16)
    over[0, 0] = 300
    masks = {
        "grey": png(labels),
        "palette": png(labels, "P"),
        "sixteen": png(labels.astype(np.uint16)),
        "rgb_grey": png(np.repeat(labels[..., None], 3, axis=2)),
        "one_bit": png(binary.astype(bool)),
        "colour": png(colour),
        "over": png(over),
        "jpeg": jpeg_bytes(labels),
    }
    assert Image.open(io.BytesIO(masks["sixteen"])).mode.startswith("I")
    assert Image.open(io.BytesIO(masks["one_bit"])).mode == "1"
    rows = [{"__key__": k, "jpg": good["jpg"], "mask.png": v} for k, v in masks.items()]
    write_shards(iter(rows), tmp_path, per_shard=10)
    out = dk.read_masked(str(tmp_path / "00000.tar"), CropResize(64, "center"))
    assert out["skipped"] == {
        "mask_not_one_channel": 1,
        "mask_label_over_255": 1,
        "mask_lossy_jpeg": 1,
    }
    want = torch.from_numpy(labels).long()
    for mask in out["masks"][:4]:
        assert torch.equal(mask.long(), want)
    assert torch.equal(out["masks"][4].long(), torch.from_numpy(binary).long())


def tiny_densecl_run(masks, run) -> list[str]:
    """The command line of 2 DenseCL steps of a tiny ViT on ``masks`` (``data masks``), with
    a dense-kNN monitor, into ``run``."""
    out = masks
    return [
        "train",
        "model.kind=image",
        "objective.name=densecl",
        "image.model=test_vit",
        "image.image_size=32",
        "image.model_kwargs={patch_size: 8, depth: 1, embed_dim: 32, num_heads: 2}",
        f"data.train_shards={out}/train/00000.tar",
        "data.batch_size=8",
        "data.num_workers=0",
        "train.steps=2",
        "objective.densecl.queue_size=16",
        "objective.densecl.projector={layers: 2, hidden: 16, dim: 16}",
        "objective.densecl.dense_head={layers: 2, hidden: 16, dim: 8}",
        "views.preset=small",
        f"train.output_dir={run}",
        "train.progress=false",
        "train.tensorboard=false",
        f"eval.evaluators=[{{kind: dense_knn, data: '{out}/heldout/00000.tar', "
        f"train_data: '{out}/train/00000.tar', k: 5}}]",
    ]


def test_data_masks_then_eval_dense_knn_through_the_cli(tmp_path, capsys):
    out = tmp_path / "masks"
    assert cli.main(["data", "masks", str(out), "--train", "24", "--heldout", "8"]) == 0
    assert "eval dense-knn" in capsys.readouterr().out
    assert json.loads((out / "heldout" / "classes.json").read_text()) == MASK_CLASSES
    run = tmp_path / "run"
    assert cli.main(tiny_densecl_run(out, run)) == 0
    report = tmp_path / "dense.json"
    assert (
        cli.main(
            [
                "eval",
                "dense-knn",
                "--checkpoint",
                str(run / "latest"),
                "--k",
                "5",
                "--train-data",
                f"{out}/train/00000.tar",
                "--data",
                f"{out}/heldout/00000.tar",
                "--json",
                str(report),
            ]
        )
        == 0
    )
    result = json.loads(report.read_text())["dense_knn"]
    assert 0 <= result["metrics"]["miou"] <= 1 and result["classnames"] == MASK_CLASSES
    printed = capsys.readouterr().out.splitlines()
    rows = printed[printed.index("  IoU per class:") + 1 :][: len(result["per_class_iou"])]
    values = [float(row.split()[-1]) for row in rows]
    assert values == sorted(values)  # worst first
    assert {row.split()[0] for row in rows} == set(result["per_class_iou"])
    assert (tmp_path / "dense.confusion.png").is_file()
    assert Image.open(tmp_path / "dense.examples.png").size[1] > 6 * 96
    assert "examples" not in result  # tensors stay out of the JSON
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("eval/dense_knn/miou" in row for row in logged)
    with pytest.raises(SystemExit):
        cli.main(["eval", "dense-knn", "--checkpoint", str(run / "latest"), "--data", "x.tar"])


def test_data_masks_one_colour_writes_the_libraries_one_colour_images(tmp_path, capsys):
    out = tmp_path / "masks"
    command = ["data", "masks", str(out), "--train", "4", "--heldout", "2", "--objects", "1"]
    assert cli.main([*command, "--one-colour"]) == 0
    written = sorted(
        (raw["__key__"], raw["jpg"])
        for raw in iter_samples(str(out / "train" / "00000.tar"), print)
    )
    want = sorted((s["__key__"], s["jpg"]) for s in masked_samples(4, 11, 64, 1, one_colour=True))
    assert written == want


@pytest.mark.parametrize("shortest", [False, True])
def test_masks_are_cut_as_their_images_with_a_partial_centre_crop(tmp_path, shortest):
    """``image.eval_crop`` < 1 in either mode: the mask keeps the pixels the image keeps. A
    red region labelled 1 on blue labelled 2, its edge off-centre: after the cut, the red
    pixels and the label-1 pixels coincide (bar the resampled edge)."""
    labels = np.full((90, 120), 2, np.uint8)
    labels[10:70, 20:57] = 1
    colours = np.where(labels[..., None] == 1, [220, 0, 0], [0, 0, 220]).astype(np.uint8)
    image = io.BytesIO()
    Image.fromarray(colours).save(image, format="PNG")
    row = {"__key__": "a", "png": image.getvalue(), "mask.png": png(labels)}
    write_shards(iter([row]), tmp_path, per_shard=10)
    transform = CropResize(48, "center", shortest_side=shortest, fraction=0.75)
    out = dk.read_masked(str(tmp_path / "00000.tar"), transform)
    red = out["images"][0, 0].long() > out["images"][0, 2].long()  # (48, 48)
    agree = (red == (out["masks"][0] == 1)).float().mean()
    assert agree > 0.97 and 0.1 < red.float().mean() < 0.9
