"""Hostile input, each through a real entry point: nothing hangs, nothing dies, every mistake
gets one clear message (issue: hardening)."""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import crash_after, run_file, tiny_overrides
from tests.data_helpers import batches, good
from tests.test_checkpoint import Payload
from vlcontrast import cli
from vlcontrast.config import EvaluatorConfig, TextTowerConfig
from vlcontrast.data import collection
from vlcontrast.data.bad_data import BadData
from vlcontrast.data.batching import Collate
from vlcontrast.data.collection import class_info, open_source
from vlcontrast.data.decode import Decoder
from vlcontrast.data.image import CropResize
from vlcontrast.data.shard_writer import write_shards
from vlcontrast.data.shards import DataPosition, ShardDataset
from vlcontrast.data.sources import parse_sources
from vlcontrast.data.tar_reader import iter_samples
from vlcontrast.models.load import load_model
from vlcontrast.models.text_tower import load_tokenizer
from vlcontrast.train import checkpoint
from vlcontrast.train.metrics_log import read_jsonl
from vlcontrast.train.optim import cosine_factor


@pytest.fixture
def tokenizer(corpus):
    return load_tokenizer(TextTowerConfig(tokenizer=corpus["tokenizer"]))


@pytest.mark.parametrize("how", ["missing", "garbage", "corrupt_images"])
def test_resampled_mode_over_only_bad_shards_stops_with_a_message(corpus, tmp_path, capsys, how):
    """Epoch mode stops at the end of its epoch; resampled mode never ends, so it must notice."""
    if how == "garbage":
        for i in range(3):
            (tmp_path / f"{i:05d}.tar").write_bytes(np.random.bytes(5000))
    elif how == "corrupt_images":
        samples = [good(i) for i in range(48)]
        for sample in samples:
            sample["jpg"] = b"not an image"
        write_shards(samples, tmp_path, per_shard=16)
    overrides = tiny_overrides(corpus, tmp_path / "run", steps=2)
    overrides += [f"data.train_shards={tmp_path}/{{00000..00002}}.tar", "data.mode=resampled"]
    start = time.perf_counter()
    code = cli.main(["train", run_file(tmp_path / "run"), *overrides])
    assert time.perf_counter() - start < 60
    err = capsys.readouterr().err
    if how == "missing":  # known before training starts
        assert code == 2 and "3 of the 3 shard(s) named do not exist" in err
        return
    assert code == 4
    assert "data error: resampled stream 0 of rank 0" in err and "check data.train_shards" in err
    assert ("truncated_shard" if how == "garbage" else "corrupt_image") in err


def base256_size_header(name: str, size: int) -> bytes:
    """A ustar header whose size field is GNU base-256 (what tar writes for 8 GiB and more)."""
    header = bytearray(512)
    header[: len(name)] = name.encode()
    header[100:108] = b"0000644\0"
    header[124:136] = b"\x80" + size.to_bytes(11, "big")
    header[156:157] = b"0"
    header[257:263] = b"ustar\0"
    header[148:156] = b" " * 8
    header[148:156] = f"{sum(header):06o}\0 ".encode()
    return bytes(header)


def test_a_base256_size_of_2_to_the_62_is_a_truncated_shard_not_a_memory_error(tmp_path, tokenizer):
    write_shards([good(i) for i in range(4)], tmp_path, per_shard=4)
    shard = tmp_path / "00000.tar"
    data = shard.read_bytes().rstrip(b"\0")
    data = data + b"\0" * (-len(data) % 512)
    shard.write_bytes(data + base256_size_header("k9999.jpg", 2**62) + b"\0" * 1024)
    decoder = Decoder(CropResize(8))
    ds = ShardDataset(parse_sources(str(shard)), decoder, Collate(tokenizer, 8), batch_size=1)
    bad = BadData()
    got = batches(ds, 0, DataPosition(), 4, bad)  # one epoch of 3, then the next one starts
    # k0003 is the sample being read when the header broke the framing: dropped, as any cut one
    assert [b["keys"][0] for b in got] == ["k0000", "k0001", "k0002", "k0000"]
    assert bad.by_reason["truncated_shard"] == 1


def test_an_image_above_max_pixels_is_skipped_from_its_header(tmp_path, tokenizer, monkeypatch):
    big = io.BytesIO()
    Image.new("RGB", (3000, 2000), (10, 200, 30)).save(big, format="PNG")
    samples = [{"__key__": "big", "png": big.getvalue(), "txt": "a large image"}, good(0)]
    write_shards(samples, tmp_path, per_shard=2)
    decoded = []
    real = CropResize.read
    monkeypatch.setattr(
        CropResize, "read", lambda self, img, rng: decoded.append(img.size) or real(self, img, rng)
    )
    decoder = Decoder(CropResize(8), max_pixels=5_000_000)
    ds = ShardDataset(parse_sources(str(tmp_path / "00000.tar")), decoder, Collate(tokenizer, 8), 1)
    bad = BadData()
    got = batches(ds, 0, DataPosition(), 1, bad)
    assert got[0]["keys"] == ["k0000"] and bad.by_reason == {"too_large": 1}
    assert (3000, 2000) not in decoded  # counted from the header, never decoded


def train_rows(run_dir) -> list[dict]:
    return [r for r in read_jsonl(run_dir / "metrics.jsonl") if "train/loss" in r]


def test_resume_applies_a_changed_lr_and_logs_each_step_once(corpus, tmp_path, monkeypatch, capsys):
    overrides = tiny_overrides(corpus, tmp_path, steps=4)
    restore = crash_after(monkeypatch, 3)  # steps 1-3 logged, checkpoint at step 2
    with pytest.raises(KeyboardInterrupt):
        cli.main(["train", run_file(tmp_path), *overrides])
    restore()
    with open(tmp_path / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 3, "train/lo')  # a line torn by the crash
    capsys.readouterr()
    resumed = [*overrides, "train.resume=latest", "optim.lr=1e-5"]
    assert cli.main(["train", run_file(tmp_path), *resumed]) == 0
    assert "optim.lr 0.0005 -> 1e-05" in capsys.readouterr().out
    rows = train_rows(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # the re-run step 3 is logged once
    for row in rows[2:]:
        want = 1e-5 * cosine_factor(row["step"], 2, 4, 0.0)
        assert row["train/lr"] == pytest.approx(want, rel=1e-6), row["step"]


def test_a_restart_killed_before_its_first_checkpoint_logs_each_step_once(
    corpus, tmp_path, monkeypatch
):
    overrides = [*tiny_overrides(corpus, tmp_path, steps=4), "train.save_every=10"]
    restore = crash_after(monkeypatch, 3)  # steps 1-3 logged, no checkpoint yet
    with pytest.raises(KeyboardInterrupt):
        cli.main(["train", run_file(tmp_path), *overrides])
    restore()
    assert [r["step"] for r in train_rows(tmp_path)] == [1, 2, 3]
    assert cli.main(["train", run_file(tmp_path), *overrides, "train.resume=latest"]) == 0
    assert [r["step"] for r in train_rows(tmp_path)] == [1, 2, 3, 4]  # not 1, 2, 3, 1, ...


def test_resuming_an_older_checkpoint_retires_the_newer_timeline(corpus, tmp_path, monkeypatch):
    overrides = tiny_overrides(corpus, tmp_path, steps=6)
    assert cli.main(["train", run_file(tmp_path), *overrides]) == 0  # checkpoints 4 and 6 kept
    older = tmp_path / "checkpoints" / "step_00000004"
    restore = crash_after(monkeypatch, 1)  # resumes at 4, dies in step 5 before any save
    with pytest.raises(KeyboardInterrupt):
        cli.main(["train", run_file(tmp_path), *overrides, f"train.resume={older}"])
    restore()
    assert checkpoint.latest(tmp_path / "checkpoints") == older  # step 6 is no longer "latest"
    (retired,) = (tmp_path / "checkpoints" / "retired").iterdir()
    assert retired.name.startswith("step_00000006-") and (retired / "model.safetensors").is_file()
    assert cli.main(["train", run_file(tmp_path), *overrides, "train.resume=latest"]) == 0
    assert [r["step"] for r in train_rows(tmp_path)] == [1, 2, 3, 4, 5, 6]


def test_a_fresh_run_refuses_a_folder_with_another_run(corpus, tmp_path, capsys):
    overrides = tiny_overrides(corpus, tmp_path, steps=2)
    assert cli.main(["train", run_file(tmp_path), *overrides]) == 0
    capsys.readouterr()
    assert cli.main(["train", run_file(tmp_path), *overrides]) == 2
    err = capsys.readouterr().err
    assert "train.output_dir" in err and "train.overwrite=true" in err and err.count("\n") == 1
    assert cli.main(["train", run_file(tmp_path), *overrides, "train.overwrite=true"]) == 0
    (aside,) = tmp_path.glob("previous-*")
    assert (aside / "metrics.jsonl").is_file() and (aside / "step_00000002").is_dir()
    assert [r["step"] for r in train_rows(tmp_path)] == [1, 2]


@pytest.mark.parametrize("kind", ["file", "read-only"])
def test_an_unwritable_output_dir_is_one_message(corpus, tmp_path, capsys, kind):
    target = tmp_path / "out"
    if kind == "file":
        target.write_text("not a directory")
    else:
        target.mkdir()
        target.chmod(0o500)
        if os.access(target, os.W_OK):  # root ignores permissions: use a read-only mount
            if subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(target)]
            ).returncode:
                pytest.skip("cannot make a read-only directory here")
    try:
        overrides = [*tiny_overrides(corpus, target, steps=1)]
        assert cli.main(["train", run_file(tmp_path), *overrides]) == 2
        assert "train.output_dir" in capsys.readouterr().err
    finally:
        if kind == "read-only":
            subprocess.run(["umount", str(target)], capture_output=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_a_full_disk_while_saving_is_one_message_and_leaves_the_last_checkpoint(
    corpus, tmp_path, capsys
):
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(ckpts)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        overrides = tiny_overrides(corpus, tmp_path, steps=4)  # checkpoints of ~420 KB
        assert cli.main(["train", run_file(tmp_path), *overrides]) == 5
        err = capsys.readouterr().err
        assert "no space left on device while writing checkpoint step 4" in err
        assert "needs about" in err and err.count("\n") == 1
        assert [p.name for p in ckpts.iterdir()] == ["step_00000002"]  # no .tmp-* left
        assert checkpoint.load_state(ckpts / "step_00000002")["step"] == 2
    finally:
        subprocess.run(["umount", str(ckpts)], capture_output=True)


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lr=-1", "optim.lr: expected a positive number"),
        ("optim.lr=nan", "optim.lr: expected a finite number"),
        ("optim.lr=1e39", "optim.lr: expected a finite number"),
        ("optim.beta1=2", "optim.beta1: expected a number in [0.0, 1.0)"),
        ("image.model=test_resnett", "image.model: timm has no model 'test_resnett'; did you mean"),
        ("text.tokenizer=/no/such/tokenizer", "text.tokenizer: /no/such/tokenizer does not exist"),
        (
            "text.config.num_attention_heads=5",
            "text.config: The hidden size (32) is not a multiple",
        ),
        (
            "text.context_length=64",
            "text.context_length: 64 tokens, but the text tower has only 32",
        ),
        ("eval.evaluators=[{kind: zeroshot}]", "eval.evaluators[0].data: set the evaluation set"),
        ("eval.evaluators=[{kind: knn, data: x.tar}]", "eval.evaluators[0].train_data:"),
        ("eval.evaluators=[{data: '/no/such/{0..1}.tar'}]", "2 of the 2 shard(s) of"),
        ("data.train_shards=/no/such/{0..3}.tar", "4 of the 4 shard(s) named do not exist"),
    ],
)
def test_each_config_mistake_is_one_line_naming_the_key(
    corpus, tmp_path, capsys, override, message
):
    overrides = [*tiny_overrides(corpus, tmp_path, steps=1), override]
    assert cli.main(["train", run_file(tmp_path), *overrides]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "metrics.jsonl").exists()  # stopped before step 1


def test_an_evaluator_template_with_an_unknown_field_stops_before_training(
    corpus, tmp_path, capsys
):
    spec = (
        f"[{{kind: zeroshot, data: '{corpus['heldout_shards']}', templates: ['a {{}} {{foo}}']}}]"
    )
    overrides = [*tiny_overrides(corpus, tmp_path, steps=1), f"eval.evaluators={spec}"]
    assert cli.main(["train", run_file(tmp_path), *overrides]) == 2
    err = capsys.readouterr().err
    assert "eval.evaluators[0] (zeroshot): templates: 'a {} {foo}' has a field {foo}" in err
    assert not (tmp_path / "metrics.jsonl").exists()


@pytest.fixture
def saved_checkpoint(corpus, tmp_path):
    overrides = tiny_overrides(corpus, tmp_path / "run", steps=2)
    assert cli.main(["train", run_file(tmp_path / "run"), *overrides]) == 0
    return checkpoint.latest(tmp_path / "run" / "checkpoints"), overrides


@pytest.mark.parametrize(
    "damaged", ["config.json", "model.safetensors", "tokenizer/tokenizer.json", "state.json"]
)
def test_a_damaged_checkpoint_file_is_named(saved_checkpoint, corpus, tmp_path, capsys, damaged):
    ckpt, overrides = saved_checkpoint
    (ckpt / damaged).write_bytes(b"\x00garbage{")
    capsys.readouterr()
    if damaged == "state.json":  # only resuming reads the training state
        args = ["train", run_file(tmp_path / "run"), *overrides, f"train.resume={ckpt}"]
    else:
        args = ["eval", "zeroshot", "--checkpoint", str(ckpt), "--data", corpus["heldout_shards"]]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "this checkpoint is damaged" in err and err.count("\n") == 1, err


def test_a_checkpoint_without_its_tokenizer_warns(saved_checkpoint, corpus, capsys):
    ckpt, _ = saved_checkpoint
    shutil.rmtree(ckpt / "tokenizer")
    (ckpt / "manifest.json").unlink()  # as versions before manifests wrote it
    args = ["eval", "zeroshot", "--checkpoint", str(ckpt), "--data", corpus["heldout_shards"]]
    assert cli.main([*args, "--workers", "0"]) == 0
    assert (
        "has no tokenizer/; using the tokenizer recorded at training time"
        in capsys.readouterr().err
    )


def test_resuming_a_planted_pickle_refuses_and_runs_nothing(saved_checkpoint, tmp_path, capsys):
    """The old checkpoint format through the real resume path: the payload never runs."""
    ckpt, overrides = saved_checkpoint
    (ckpt / "state.json").unlink()
    (ckpt / "state.safetensors").unlink()
    marker = tmp_path / "pwned"
    with open(ckpt / "train_state.pt", "wb") as handle:
        pickle.dump({"step": 2, "rng": Payload(str(marker))}, handle)
    args = ["train", run_file(tmp_path / "run"), *overrides, "train.resume=latest"]
    assert cli.main(args) == 2
    assert "refusing to load" in capsys.readouterr().err
    assert not marker.exists()


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


def test_globs_and_directories_are_shard_specs_and_inspect_decodes(tmp_path, capsys):
    samples = [good(i) for i in range(12)]
    samples[3]["jpg"] = b"\xff\xd8\xff\xe0 not really a jpeg"
    write_shards(samples, tmp_path / "s", per_shard=4)
    for spec in (f"{tmp_path}/s/*.tar", f"{tmp_path}/s"):
        assert cli.main(["shards", "inspect", spec, "--sheet", ""]) == 0
        out = capsys.readouterr().out
        assert "12 samples in 3 shard(s)" in out and "corrupt_image=1" in out
    assert cli.main(["shards", "inspect", f"{tmp_path}/none/*.tar", "--sheet", ""]) == 2
    assert "URLS: pattern" in capsys.readouterr().err


def test_the_all_bad_message_counts_every_failure(corpus, tmp_path, capsys):
    samples = [good(i) for i in range(60)]
    for sample in samples:
        sample["jpg"] = b"garbage"
    write_shards(samples, tmp_path / "s", per_shard=20)
    overrides = [*tiny_overrides(corpus, tmp_path / "run", steps=1), "data.num_workers=2"]
    overrides.append(f"data.train_shards={tmp_path}/s/{{00000..00002}}.tar")
    assert cli.main(["train", run_file(tmp_path / "run"), *overrides]) == 4
    assert "{'corrupt_image': 60}" in capsys.readouterr().err


def test_shard_makers_use_the_one_vocabulary(tmp_path, capsys):
    import datasets

    rows = {"image": [{"bytes": b"", "path": None}, {"bytes": None, "path": None}]}
    rows["text"] = ["an empty file", "no image at all"]
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "hf"))
    out = tmp_path / "shards"
    args = ["data", "hf", str(tmp_path / "hf"), "--out", str(out), "--per-shard", "4"]
    assert cli.main([*args, "--no-progress"]) == 0
    stats = json.loads((out / "00000_stats.json").read_text())
    assert stats["skipped"] == {"corrupt_image": 1, "missing_image": 1}
    (tmp_path / "captions.csv").write_text("image,text\na.png,hello\n")
    args = [
        "data",
        "captions",
        "--images",
        str(tmp_path),
        "--table",
        str(tmp_path / "captions.csv"),
    ]
    args += ["--image-column", "image", "--caption-column", "caption", "--out", str(out)]
    assert cli.main(args) == 2
    assert "no column 'caption'" in capsys.readouterr().err


def test_a_checkpoint_loads_only_what_it_contains(saved_checkpoint, corpus, monkeypatch, capsys):
    """A config.json naming hub models never triggers a download: the text tower comes from
    the checkpoint's text_config.json, a hub image model is refused without --allow-download."""
    ckpt, _ = saved_checkpoint
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    values = json.loads((ckpt / "config.json").read_text())
    values["text"].update(model="some-org/some-text-model", config={}, pretrained=True)
    (ckpt / "config.json").write_text(json.dumps(values))
    model, tokenizer, cfg = load_model(ckpt)  # no network: rebuilt from text_config.json
    assert cfg.text.model == "" and cfg.text.config["model_type"] == "bert"
    values["image"]["model"] = "hf-hub:some-org/some-image-model"
    (ckpt / "config.json").write_text(json.dumps(values))
    args = ["eval", "zeroshot", "--checkpoint", str(ckpt), "--data", corpus["heldout_shards"]]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "image.model is the hub model 'hf-hub:some-org/some-image-model'" in err
    assert "--allow-download" in err and err.count("\n") == 1
