"""Hostile data through the real entry points: bad shards, lying tar headers, oversized
images, globs; every bad sample skipped and counted by reason, one message when all are bad."""

from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import run_file, tiny_overrides
from tests.data_helpers import batches, good
from vlcontrast import cli
from vlcontrast.data.bad_data import BadData
from vlcontrast.data.batching import Collate
from vlcontrast.data.decode import Decoder
from vlcontrast.data.image import CropResize
from vlcontrast.data.shard_writer import write_shards
from vlcontrast.data.shards import DataPosition, ShardDataset
from vlcontrast.data.sources import parse_sources


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


def test_a_huge_caption_is_cut_before_tokenizing_and_gives_the_same_tokens(
    tmp_path, tokenizer, monkeypatch
):
    """A huge caption (a stranger's shard): the tokenizer sees 64k characters, not all, and
    the batch's tokens equal those of the whole text truncated to the context."""
    from vlcontrast.data.captions import MAX_CAPTION_CHARS

    caption = "a small red circle at the top left " * 9_000  # 315,000 characters
    write_shards([{**good(0), "txt": caption}, good(1)], tmp_path, per_shard=2)
    seen = []
    real = Collate.tokenize
    monkeypatch.setattr(
        Collate, "tokenize", lambda self, texts: seen.extend(map(len, texts)) or real(self, texts)
    )
    decoder = Decoder(CropResize(8))
    ds = ShardDataset(parse_sources(str(tmp_path / "00000.tar")), decoder, Collate(tokenizer, 8), 2)
    got = batches(ds, 0, DataPosition(), 1)
    assert got[0]["keys"] == ["k0000", "k0001"] and max(seen) == MAX_CAPTION_CHARS
    whole = real(Collate(tokenizer, 8), [caption.strip()])
    assert torch.equal(got[0]["input_ids"][0], whole["input_ids"][0])


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


def test_one_label_parser_for_training_evaluation_and_search():
    from vlcontrast.data.captions import parse_label
    from vlcontrast.data.skip import SkipSample
    from vlcontrast.search.units import label_of

    for value, want in ((7, 7), ("7", 7), (b"7\n", 7), (" 3 ", 3), ("4.0", 4)):
        assert parse_label(value) == want and label_of(value) == want
    for value, reason in (
        (None, "missing_label"),
        ("seven", "bad_label"),
        ("7.5", "bad_label"),
        (b"\xff", "bad_label"),
        (True, "bad_label"),
    ):
        with pytest.raises(SkipSample) as caught:
            parse_label(value)
        assert caught.value.reason == reason and label_of(value) is None
