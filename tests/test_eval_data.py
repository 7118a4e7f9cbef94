"""Every evaluation dataset kind loads, in a fixed order, with bad records skipped and counted."""

import io
import json

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from vlcontrast.config import EvaluatorConfig
from vlcontrast.data.collection import EvalDataset, class_info, detect_format, open_source
from vlcontrast.data.image import CropResize
from vlcontrast.data.shard_writer import write_shards
from vlcontrast.embed import embed_images
from vlcontrast.eval.templates import OPENAI_IMAGENET, resolve_templates

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (20, 40, 230)}


class MeanColour(nn.Module):
    """A stand-in image tower: the unit-norm mean colour, so embeddings are known in advance."""

    embed_dim = 3

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(images.float().mean(dim=(2, 3)), dim=-1)


to_tensor = CropResize(4, "center")  # the training pipeline's own transform


def image_bytes(colour: str, mode: str = "RGB", fmt: str = "PNG") -> bytes:
    image = Image.new("RGB", (8, 6), COLOURS[colour]).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def embed(source, workers=0, label=True, captions=False):
    dataset = EvalDataset(source, to_tensor, need_label=label, need_captions=captions)
    return embed_images(MeanColour(), dataset, batch_size=2, num_workers=workers)


def test_image_folder_gives_folder_classes_and_sorted_order(tmp_path):
    for colour in COLOURS:
        (tmp_path / f"{colour}_things").mkdir()
        for i in range(3):
            (tmp_path / f"{colour}_things" / f"{i}.png").write_bytes(image_bytes(colour))
    (tmp_path / "red_things" / "notes.txt").write_text("not an image")
    (tmp_path / "blue_things" / "broken.jpg").write_bytes(b"not a jpeg")
    spec = EvaluatorConfig(data=str(tmp_path))
    assert detect_format(str(tmp_path)) == "imagefolder"
    source = open_source(spec, spec.data, spec.split)
    assert class_info(spec, source)[0] == ["blue things", "green things", "red things"]
    out = embed(source)
    assert out["labels"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert out["skipped"] == {"corrupt_image": 1}
    assert out["keys"][0] == "blue_things/0.png"
    # the mean colour of a blue image points mostly along the blue axis
    assert out["img_emb"][:3, 2].min() > 0.9


IMAGE_KINDS = [
    ("jpg", "RGB", "JPEG"),
    ("jpg", "CMYK", "JPEG"),
    ("png", "P", "PNG"),
    ("webp", "RGBA", "WEBP"),
]


def labelled_shards(tmp_path, n=10):
    names = list(COLOURS)
    samples = []
    for i in range(n):
        colour = names[i % 3]
        ext, mode, fmt = IMAGE_KINDS[i % 4]
        sample = {"__key__": f"{i:05d}", ext: image_bytes(colour, mode, fmt), "cls": str(i % 3)}
        sample["json"] = json.dumps({"captions": [f"a {colour} image", f"{colour}"]})
        samples.append(sample)
    samples.append({"__key__": "bad_image", "jpg": b"\xff\xd8 truncated", "cls": "0"})
    samples.append({"__key__": "no_label", "jpg": image_bytes("red", fmt="JPEG")})
    write_shards(samples, tmp_path, per_shard=4)
    (tmp_path / "classes.json").write_text(json.dumps({"classnames": names, "templates": ["{}"]}))
    return str(tmp_path / "{00000..00002}.tar")


def test_shards_with_a_label_field_load_and_skip_bad_records(tmp_path):
    pattern = labelled_shards(tmp_path)
    spec = EvaluatorConfig(data=pattern)
    source = open_source(spec, spec.data, spec.split)
    assert class_info(spec, source) == (list(COLOURS), ["{}"])
    out = embed(source)
    assert out["labels"].tolist() == [i % 3 for i in range(10)]
    assert out["keys"] == [f"{i:05d}" for i in range(10)]
    assert out["skipped"] == {"corrupt_image": 1, "missing_label": 1}
    # every image mode (RGB, CMYK, palette, RGBA) decodes to the right colour
    assert (out["img_emb"].argmax(dim=1) == torch.tensor([0, 1, 2] * 3 + [0])).all()


def test_dataloader_workers_do_not_change_the_result(tmp_path):
    pattern = labelled_shards(tmp_path)
    spec = EvaluatorConfig(data=pattern)
    one = embed(open_source(spec, spec.data, spec.split), workers=0)
    two = embed(open_source(spec, spec.data, spec.split), workers=2)
    assert one["keys"] == two["keys"] and one["skipped"] == two["skipped"]
    assert torch.equal(one["img_emb"], two["img_emb"])


def test_captions_from_a_json_field_may_be_lists(tmp_path):
    pattern = labelled_shards(tmp_path)
    spec = EvaluatorConfig(data=pattern, caption_field="json.captions")
    out = embed(open_source(spec, spec.data, spec.split), label=False, captions=True)
    assert out["captions"][0] == ["a red image", "red"]
    assert out["skipped"] == {"missing_caption": 2}  # the two bad samples have no .json


def hf_dataset(n=9):
    import datasets

    features = datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=list(COLOURS)),
            "caption": datasets.Value("string"),
        }
    )
    names = list(COLOURS)
    rows = {
        "image": [{"bytes": image_bytes(names[i % 3]), "path": None} for i in range(n)],
        "label": [i % 3 for i in range(n)],
        "caption": [f"a {names[i % 3]} square" for i in range(n)],
    }
    rows["image"][4] = {"bytes": b"corrupt", "path": None}
    return datasets.Dataset.from_dict(rows, features=features)


def test_hf_dataset_saved_to_disk_loads_with_its_class_names(tmp_path):
    import datasets

    datasets.DatasetDict({"test": hf_dataset()}).save_to_disk(tmp_path / "hf")
    spec = EvaluatorConfig(data=str(tmp_path / "hf"))
    assert detect_format(spec.data) == "hf"
    source = open_source(spec, spec.data, spec.split)
    assert class_info(spec, source)[0] == list(COLOURS)
    out = embed(source, captions=True)
    assert out["labels"].tolist() == [0, 1, 2, 0, 2, 0, 1, 2]  # row 4 is corrupt
    assert out["captions"][0] == ["a red square"]
    assert out["skipped"] == {"corrupt_image": 1}
    with pytest.raises(ValueError, match="no split 'validation'"):
        open_source(spec, spec.data, "validation")


def test_hf_dataset_through_load_dataset_like_a_hub_repo(tmp_path):
    """A folder of parquet files is what load_dataset reads for a hub name once downloaded."""
    (tmp_path / "repo" / "data").mkdir(parents=True)
    hf_dataset().to_parquet(str(tmp_path / "repo" / "data" / "test-00000-of-00001.parquet"))
    spec = EvaluatorConfig(data=f"hf:{tmp_path / 'repo'}", label_field="label")
    source = open_source(spec, spec.data, "test")
    out = embed(source)
    assert len(out["labels"]) == 8 and out["skipped"] == {"corrupt_image": 1}


def test_templates_resolve_from_names_files_and_literals(tmp_path):
    assert len(resolve_templates(["openai_imagenet"])) == 80 == len(set(OPENAI_IMAGENET))
    path = tmp_path / "t.txt"
    path.write_text("a {} here\n\nthe {}\n")
    assert resolve_templates([str(path), "x {}"]) == ["a {} here", "the {}", "x {}"]
    assert resolve_templates([], fallback=["{}!"]) == ["{}!"]
    with pytest.raises(ValueError, match="neither a built-in set"):
        resolve_templates(["imagenet80"])


def test_undecodable_label_and_caption_members_are_skipped_not_raised(tmp_path):
    good = image_bytes("red", fmt="JPEG")
    samples = [
        {"__key__": "a", "jpg": good, "cls": "0", "json": '{"captions": ["red"]}'},
        {"__key__": "b", "jpg": good, "cls": b"\xff\xfe", "json": "{not json"},
    ]
    write_shards(samples, tmp_path, per_shard=2)
    spec = EvaluatorConfig(data=str(tmp_path / "00000.tar"), caption_field="json.captions")
    source = open_source(spec, spec.data, spec.split)
    assert embed(source)["skipped"] == {"bad_label": 1}
    assert embed(source, label=False, captions=True)["skipped"] == {"bad_json": 1}


def test_a_folder_collection_never_reads_a_device_or_a_pipe(tmp_path):
    """A link to /dev/zero or a pipe named like an image would never end or would block; the
    evaluation and search collections skip them (``missing_image``) without reading them, and
    the segmentation maker counts them as ``not_a_file``."""
    import os
    from collections import Counter

    from vlcontrast.data.image import read_image_file
    from vlcontrast.data.skip import SkipSample

    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(folder / "a.jpg")
    (folder / "b.jpg").symlink_to("/dev/zero")
    os.mkfifo(folder / "c.png")
    from vlcontrast.data.collection import ImageFolderSource

    source = ImageFolderSource(folder)
    read = {r["key"]: r["image"] for r in source.read(range(len(source)), Counter())}
    assert read["a.jpg"] and read["b.jpg"] is None and read["c.png"] is None
    for name in ("b.jpg", "c.png"):
        with pytest.raises(SkipSample, match="not_a_file"):
            read_image_file(folder / name)
    with pytest.raises(SkipSample, match="missing_mask"):
        read_image_file(folder / "gone.png", "missing_mask")
