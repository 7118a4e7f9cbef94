"""Evaluation labels: labels outside the classes skipped and counted, class files in another
order, and --max-samples reading only the shards it needs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from tests.data_helpers import good
from vlcontrast import cli
from vlcontrast.config import EvaluatorConfig
from vlcontrast.data import collection
from vlcontrast.data.collection import class_info, open_source
from vlcontrast.data.shard_writer import write_shards
from vlcontrast.data.sources import parse_sources
from vlcontrast.data.tar_reader import iter_samples
from vlcontrast.models.load import load_model


def copy_heldout(corpus, out, relabel: dict[int, str], n: int = 16) -> str:
    """The first ``n`` held-out samples as new shards (+ classes.json), some labels replaced."""
    (url,) = parse_sources(corpus["heldout_shards"])[0].urls
    samples = []
    for i, raw in enumerate(iter_samples(url, lambda reason: None)):
        if i == n:
            break
        sample = {k: v for k, v in raw.items() if k != "__url__"}
        sample["cls"] = relabel.get(i, raw["cls"])
        samples.append(sample)
    write_shards(samples, out, per_shard=n)
    shutil.copy(Path(url).parent / "classes.json", out / "classes.json")
    return str(out / "00000.tar")


def test_zeroshot_skips_and_counts_labels_outside_the_classes(saved_checkpoint, corpus, tmp_path):
    ckpt, _ = saved_checkpoint
    data = copy_heldout(corpus, tmp_path / "labels", {0: "-1", 5: "-1", 9: "99"})
    report = tmp_path / "zs.json"
    args = ["eval", "zeroshot", "--checkpoint", str(ckpt), "--data", data, "--workers", "0"]
    assert cli.main([*args, "--json", str(report)]) == 0
    result = json.loads(report.read_text())["zeroshot"]
    assert result["skipped"] == {"label_out_of_range": 3} and result["metrics"]["n"] == 13


def test_a_classes_file_in_another_order_labels_image_folders_by_name(tmp_path):
    colours = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (20, 40, 230)}
    for name, rgb in colours.items():
        (tmp_path / "tree" / f"{name}_thing").mkdir(parents=True)
        Image.new("RGB", (8, 8), rgb).save(tmp_path / "tree" / f"{name}_thing" / "0.png")
    names = ["red thing", "green thing", "blue thing"]  # not the folders' sorted order
    (tmp_path / "classes.txt").write_text("\n".join(names) + "\n")
    spec = EvaluatorConfig(data=str(tmp_path / "tree"), classes=str(tmp_path / "classes.txt"))
    source = open_source(spec, spec.data, spec.split)
    assert class_info(spec, source)[0] == names
    labels = {path.parent.name: label for path, label in source.items}
    assert labels == {"red_thing": 0, "green_thing": 1, "blue_thing": 2}
    (tmp_path / "classes.txt").write_text("red thing\ngreen thing\nblue thing\npurple thing\n")
    with pytest.raises(ValueError, match="1 name\\(s\\) match no folder"):
        class_info(spec, open_source(spec, spec.data, spec.split))


def test_max_samples_reads_only_the_shards_it_needs(saved_checkpoint, tmp_path, monkeypatch):
    ckpt, _ = saved_checkpoint
    write_shards([good(i) for i in range(16)], tmp_path / "s", per_shard=4)
    read = []
    real = collection.iter_samples
    monkeypatch.setattr(
        collection, "iter_samples", lambda url, *a, **k: read.append(url) or real(url, *a, **k)
    )
    spec = EvaluatorConfig(data=str(tmp_path / "s" / "{00000..00003}.tar"), max_samples=6)
    source = open_source(spec, spec.data, spec.split)
    model, tokenizer, cfg = load_model(ckpt)
    from vlcontrast.embed import Embedder

    out = Embedder.from_model(model, tokenizer, cfg).images(source, max_samples=6)
    assert len(out["keys"]) == 6 and sorted(set(read)) == sorted(source.urls)
    assert len(source.urls) == 2  # 4 + 4 samples cover the first 6
