"""The training data pipeline: epoch coverage, resampling, exact resume, bad-data accounting."""

import io
import json
import tarfile
from collections import Counter

import pytest

from tests import distributed_data_case as case
from tests.conftest import run_file, spawn_gloo, tiny_overrides
from tests.data_helpers import batches, dataset, good, jpeg, one_epoch, run, saved
from vlcontrast import cli
from vlcontrast.data.bad_data import BadData
from vlcontrast.data.shard_writer import write_shards
from vlcontrast.data.shards import DataError, DataPosition
from vlcontrast.train.metrics_log import read_jsonl


@pytest.fixture
def shards(tmp_path):
    """6 shards of uneven sizes (64 samples in all)."""
    sizes, start = [16, 8, 12, 4, 16, 8], 0
    for index, size in enumerate(sizes):
        samples = [good(i) for i in range(start, start + size)]
        write_shards(samples, tmp_path / f"s{index}", per_shard=size)
        start += size
    return "::".join(str(tmp_path / f"s{i}" / "00000.tar") for i in range(len(sizes)))


def keys_of(batches):
    return [k for batch in batches for k in batch]


@pytest.mark.parametrize("workers", [0, 2])
def test_each_sample_once_per_epoch_and_reshuffled(shards, tokenizer, workers):
    ds = dataset(shards, tokenizer, batch=1, shuffle_buffer=8)
    batches = run(ds, workers, DataPosition(), steps=128)
    epoch0, epoch1 = keys_of(batches[:64]), keys_of(batches[64:])
    assert sorted(epoch0) == sorted(epoch1) == [f"k{i:04d}" for i in range(64)]
    assert epoch0 != epoch1


def test_order_does_not_depend_on_the_worker_count(shards, tokenizer):
    orders = []
    for workers in (0, 1, 2, 3):
        ds = dataset(shards, tokenizer, batch=2, shuffle_buffer=8)
        position = DataPosition()
        position.reset(6)
        orders.append(run(ds, workers, position, steps=40))
    assert orders[0] == orders[1] == orders[2] == orders[3]


@pytest.mark.parametrize("mode", ["epoch", "resampled"])
@pytest.mark.parametrize("k, workers_before, workers_after", [(3, 0, 0), (7, 2, 2), (5, 2, 3)])
def test_resume_after_k_steps_reproduces_the_uninterrupted_order(
    shards, tokenizer, mode, k, workers_before, workers_after
):
    """Also across an epoch end (14 steps of 4 from ~60 usable samples) and a worker-count
    change: the position is saved and reloaded as a checkpoint does."""

    def fresh():
        position = DataPosition()
        position.reset(4)
        return dataset(shards, tokenizer, batch=4, shuffle_buffer=6, mode=mode), position

    ds, position = fresh()
    full = run(ds, workers_before, position, steps=20)
    ds, position = fresh()
    first = run(ds, workers_before, position, steps=k)
    ds, _ = fresh()
    rest = run(ds, workers_after, saved(position), steps=20 - k)
    assert first + rest == full
    assert len(set(keys_of(first + rest)[:48])) == 48 or mode == "resampled"


def test_resampled_mode_is_deterministic_by_seed_and_weighted(tmp_path, tokenizer):
    write_shards([good(i) for i in range(40)], tmp_path / "a", per_shard=10)
    a = [{**good(i), "__key__": f"b{i:04d}"} for i in range(20)]
    write_shards(a, tmp_path / "b", per_shard=10)
    pattern = f"{tmp_path}/a/{{00000..00003}}.tar::{tmp_path}/b/{{00000..00001}}.tar"

    def keys(seed, weights):
        ds = dataset(pattern, tokenizer, batch=8, mode="resampled", seed=seed, weights=weights)
        return keys_of(run(ds, 0, DataPosition(), steps=60))

    assert keys(0, [3, 1]) == keys(0, [3, 1])
    assert keys(0, [3, 1]) != keys(1, [3, 1])
    share = sum(k.startswith("b") for k in keys(0, [1, 3])) / 480
    assert 0.6 < share < 0.9  # 0.75 expected; shards come in runs of 10, hence the wide band


@pytest.mark.slow  # multi-process end to end: the README's command runs it
def test_coverage_is_exact_across_two_ranks_and_two_workers(shards, corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("VLC_TEST_TOKENIZER", corpus["tokenizer"])
    out = tmp_path / "keys.json"
    spawn_gloo(case.worker, 2, tmp_path, shards, str(out))
    per_rank = json.loads(out.read_text())
    everything = [k for keys in per_rank for k in keys]
    assert sorted(everything) == [f"k{i:04d}" for i in range(64)]
    assert all(per_rank)


def test_planted_bad_samples_are_skipped_and_counted_by_reason(tmp_path, tokenizer):
    samples = [good(i) for i in range(12)]
    samples[1]["jpg"] = b"not a jpeg at all"
    del samples[2]["txt"]
    samples[3]["txt"] = "   "
    del samples[4]["jpg"]
    samples[5]["txt"] = b"\xff\xfe bad utf-8"
    samples[6]["jpg"] = samples[6]["jpg"][:40]  # truncated JPEG data
    write_shards(samples, tmp_path / "a", per_shard=12)
    write_shards([good(i) for i in range(20, 30)], tmp_path / "b", per_shard=10)
    shard_b = tmp_path / "b" / "00000.tar"
    with tarfile.open(shard_b) as tar:
        at = tar.getmember("k0023.txt").offset + 100
    shard_b.write_bytes(shard_b.read_bytes()[:at])  # k0023 loses its caption; k0024.. are gone
    pattern = f"{tmp_path}/a/00000.tar::{shard_b}::{tmp_path}/missing.tar"
    bad = BadData()
    keys = one_epoch(dataset(pattern, tokenizer, batch=1), 2, 2, bad)
    survivors = ["k0000", "k0007", "k0008", "k0009", "k0010", "k0011", "k0020", "k0021", "k0022"]
    assert sorted(keys) == survivors  # k0023 was cut short; nothing after the cut is read
    assert bad.by_reason == Counter(
        corrupt_image=2,
        missing_caption=1,
        empty_caption=1,
        missing_image=1,
        bad_caption_encoding=1,
        truncated_shard=1,
        unreadable_shard=1,
    )
    assert bad.by_shard[str(tmp_path / "a" / "00000.tar")]["corrupt_image"] == 2
    assert bad.seen == 9 + 6


def planted(tmp_path, corrupt: int):
    """Two shards of 20; ``corrupt`` images of the second are garbage."""
    write_shards([good(i) for i in range(20)], tmp_path / "ok", per_shard=20)
    second = [good(i) for i in range(20, 40)]
    for sample in second[:corrupt]:
        sample["jpg"] = b"garbage"
    write_shards(second, tmp_path / "bad", per_shard=20)
    return f"{tmp_path}/ok/00000.tar::{tmp_path}/bad/00000.tar"


def test_training_goes_on_past_bad_samples_and_reports_them(corpus, tmp_path, capsys):
    overrides = tiny_overrides(corpus, tmp_path, steps=6)
    overrides += [f"data.train_shards={planted(tmp_path, 3)}", "data.batch_size=4"]
    overrides += ["data.shuffle_buffer=1"]  # the 3 bad samples come first in their stream
    assert cli.main(["train", run_file(tmp_path), *overrides, "data.num_workers=2"]) == 0
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert rows[-1]["train/skipped/corrupt_image"] == 3 and rows[-1]["train/samples_read"] == 27
    out = capsys.readouterr().out
    assert "skipped 3" in out  # the progress/log line
    assert "data: 27 samples read, 3 skipped (11.11%): corrupt_image=3" in out  # end summary
    assert "bad/00000.tar" in out


def test_too_many_failures_stop_naming_the_worst_shard(corpus, tmp_path, capsys):
    overrides = tiny_overrides(corpus, tmp_path, steps=6)
    overrides += [f"data.train_shards={planted(tmp_path, 12)}", "data.batch_size=4"]
    overrides += ["data.max_bad_fraction=0.1", "data.bad_min_samples=20", "data.num_workers=2"]
    assert cli.main(["train", run_file(tmp_path), *overrides]) == 4
    err = capsys.readouterr().err
    assert "data.max_bad_fraction=0.1" in err
    assert f"worst shard: {tmp_path}/bad/00000.tar (corrupt_image 12)" in err


def test_fewer_shards_than_streams_is_a_clear_error(shards, tokenizer):
    ds = dataset(shards, tokenizer)
    position = DataPosition()
    position.reset(8)
    with pytest.raises(DataError, match="6 shard.*1 rank.*x 8 stream"):
        run(ds, 0, position, steps=1)


def test_no_sample_with_the_configured_keys_is_a_clear_error(tmp_path, tokenizer):
    samples = [{"__key__": f"k{i}", "jpg": jpeg(), "json": b'{"text": "x"}'} for i in range(8)]
    write_shards(samples, tmp_path, per_shard=8)
    ds = dataset(f"{tmp_path}/00000.tar", tokenizer, caption_key="txt")
    with pytest.raises(DataError, match="data.caption_key=txt but it has jpg, json"):
        run(ds, 0, DataPosition(), steps=1)


def test_caption_from_a_json_field_and_one_of_several_picked(tmp_path, tokenizer):
    meta = [json.dumps({"meta": {"caps": [f"first {i}", f"second {i}"]}}) for i in range(32)]
    samples = [{"__key__": f"k{i:04d}", "jpg": jpeg(), "json": meta[i]} for i in range(32)]
    write_shards(samples, tmp_path, per_shard=32)

    def texts():
        ds = dataset(f"{tmp_path}/00000.tar", tokenizer, batch=32, caption_key="json.meta.caps")
        return batches(ds, 0, DataPosition(), steps=1)[0]["texts"]

    picked = texts()
    assert picked == texts()  # seeded per sample
    assert {t.split()[0] for t in picked} == {"first", "second"}


def test_img2dataset_output_trains_without_conversion(corpus, tmp_path, capsys):
    """img2dataset's layout: 9-digit keys, jpg + txt + json members, a parquet and a
    ``_stats.json`` beside each shard, no sizes.json."""
    import tarfile as tf

    from tests.data_helpers import jpeg as make_jpeg

    for shard in range(2):
        with tf.open(tmp_path / f"{shard:05d}.tar", "w") as tar:
            for i in range(12):
                key = f"{shard:05d}{i:04d}"
                meta = {"url": f"http://x/{key}.jpg", "key": key, "status": "success"}
                members = {
                    "jpg": make_jpeg((10 * i, 100, 200), (64, 48)),
                    "txt": f"picture number {i}".encode(),
                    "json": json.dumps(meta).encode(),
                }
                for ext, payload in members.items():
                    info = tf.TarInfo(f"{key}.{ext}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
        (tmp_path / f"{shard:05d}.parquet").write_bytes(b"PAR1")
        stats = {"count": 14, "successes": 12, "failed_to_download": 2}
        (tmp_path / f"{shard:05d}_stats.json").write_text(json.dumps(stats))
    overrides = tiny_overrides(corpus, tmp_path / "run", steps=3)
    overrides += [f"data.train_shards={tmp_path}/{{00000..00001}}.tar", "data.batch_size=4"]
    assert cli.main(["train", run_file(tmp_path / "run"), *overrides]) == 0
    assert "24 samples in 2 shard(s) from 1 source(s) (_stats.json)" in capsys.readouterr().out


def test_the_failure_stop_is_decided_on_all_ranks_counts(tmp_path):
    out = tmp_path / "outcomes.json"
    spawn_gloo(case.bad_data_worker, 2, tmp_path, str(out))
    assert json.loads(out.read_text()) == [["ok", "stop"], ["ok", "stop"]]
