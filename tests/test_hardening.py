"""Hostile input, each through a real entry point: nothing hangs, nothing dies, every mistake
gets one clear message (issue: hardening)."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from PIL import Image

from tests.conftest import run_file, tiny_overrides
from tests.data_helpers import batches, good
from vlcontrast import cli
from vlcontrast.config import TextTowerConfig
from vlcontrast.data.bad_data import BadData
from vlcontrast.data.batching import Collate
from vlcontrast.data.decode import Decoder
from vlcontrast.data.image import CropResize
from vlcontrast.data.shard_writer import write_shards
from vlcontrast.data.shards import DataPosition, ShardDataset
from vlcontrast.data.sources import parse_sources
from vlcontrast.models.text_tower import load_tokenizer


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
    assert cli.main(["train", run_file(tmp_path / "run"), *overrides]) == 4
    assert time.perf_counter() - start < 60
    err = capsys.readouterr().err
    assert "data error: resampled stream 0 of rank 0" in err and "check data.train_shards" in err
    reason = {"missing": "unreadable_shard", "garbage": "truncated_shard"}.get(how, "corrupt_image")
    assert reason in err


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
