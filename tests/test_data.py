"""Shard reading: every sample once per epoch across workers, bad data skipped and counted."""

import io
import itertools
import tarfile
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from vlcontrast.config import TextTowerConfig
from vlcontrast.data.batching import Collate, iterate_epochs, make_loader
from vlcontrast.data.shard_writer import write_shards
from vlcontrast.data.shards import DataPosition, Decoder, ShardDataset, expand_urls
from vlcontrast.data.transforms import image_transform
from vlcontrast.models.text_tower import load_tokenizer


def jpeg(color=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (20, 12), color).save(buffer, format="JPEG")
    return buffer.getvalue()


def good(i: int) -> dict:
    return {"__key__": f"k{i:04d}", "jpg": jpeg(), "txt": f"sample {i}"}


def dataset(urls, **kwargs) -> ShardDataset:
    decoder = Decoder(image_transform(16, (0.5,) * 3, (0.5,) * 3))
    return ShardDataset(urls, decoder, **kwargs)


@pytest.mark.parametrize("cut", ["header", "data"])
def test_bad_samples_are_skipped_and_counted_by_reason(tmp_path, cut):
    samples = [good(i) for i in range(10)]
    samples[1]["jpg"] = b"not a jpeg at all"
    del samples[2]["txt"]
    samples[3]["txt"] = "   "
    del samples[4]["jpg"]
    samples[5]["png"] = samples[5].pop("jpg")  # a png key with JPEG bytes: PIL sniffs, fine
    write_shards(samples, tmp_path / "a", per_shard=10)
    write_shards([good(i) for i in range(10, 20)], tmp_path / "b", per_shard=10)
    shard_b = tmp_path / "b" / "00000.tar"
    with tarfile.open(shard_b) as tar:
        member = tar.getmember("k0012.txt")
        at = member.offset + 100 if cut == "header" else member.offset_data + 3
    shard_b.write_bytes(shard_b.read_bytes()[:at])  # k0012 loses its caption either way
    ds = dataset([str(tmp_path / "a" / "00000.tar"), str(shard_b)], shuffle_shards=False)
    keys = [s["key"] for s in ds]
    assert keys[:6] == ["k0000", "k0005", "k0006", "k0007", "k0008", "k0009"]
    assert keys[6:] == ["k0010", "k0011"]  # samples before the cut survive; k0012 is dropped
    assert ds.errors == Counter(
        corrupt_image=1, missing_caption=1, empty_caption=1, missing_image=1, truncated_shard=1
    )


def test_missing_shard_is_counted_not_fatal(tmp_path):
    write_shards([good(i) for i in range(3)], tmp_path, per_shard=3)
    ds = dataset([str(tmp_path / "00000.tar"), str(tmp_path / "nope.tar")], shuffle_shards=False)
    assert len(list(ds)) == 3 and ds.errors["unreadable_shard"] == 1


@pytest.fixture
def tokenizer(corpus):
    return load_tokenizer(TextTowerConfig(tokenizer=corpus["tokenizer"]))


def loader_keys(urls, tokenizer, workers, position, steps, batch=8, seed=0):
    ds = dataset(urls, seed=seed, shuffle_buffer=16)
    loader = make_loader(ds, Collate(tokenizer, 8, ds), batch, workers, drop_last=True)
    stream = iterate_epochs(loader, ds, position)
    return [b["keys"] for b in itertools.islice(stream, steps)]


@pytest.mark.parametrize("workers", [0, 2])
def test_each_sample_once_per_epoch_and_shuffled_per_epoch(tmp_path, tokenizer, workers):
    write_shards([good(i) for i in range(64)], tmp_path, per_shard=16)
    urls = expand_urls(str(tmp_path / "{00000..00003}.tar"))
    batches = loader_keys(urls, tokenizer, workers, DataPosition(), steps=16)
    epoch0 = [k for b in batches[:8] for k in b]
    epoch1 = [k for b in batches[8:] for k in b]
    assert sorted(epoch0) == sorted(epoch1) == [f"k{i:04d}" for i in range(64)]
    assert epoch0 != epoch1


@pytest.mark.parametrize("workers, k", [(0, 3), (2, 3), (2, 6), (2, 8)])
def test_resume_position_continues_the_exact_sample_order(tmp_path, tokenizer, workers, k):
    write_shards([good(i) for i in range(64)], tmp_path, per_shard=16)
    urls = expand_urls(str(tmp_path / "{00000..00003}.tar"))
    full = loader_keys(urls, tokenizer, workers, DataPosition(), steps=12)
    position = DataPosition()
    first = loader_keys(urls, tokenizer, workers, position, steps=k)
    saved = DataPosition(position.epoch, list(position.consumed), position.next_worker)
    rest = loader_keys(urls, tokenizer, workers, saved, steps=12 - k)
    assert first + rest == full


def test_too_few_shards_for_the_workers_is_a_clear_error(tmp_path, tokenizer):
    write_shards([good(i) for i in range(16)], tmp_path, per_shard=16)
    with pytest.raises(ValueError, match="every stream needs a shard"):
        loader_keys([str(Path(tmp_path) / "00000.tar")], tokenizer, 2, DataPosition(), steps=1)
