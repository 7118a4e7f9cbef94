"""Class-balanced P x K batches (data/balanced.py): the epoch plan, coverage across ranks and
workers, exact resume, and the messages for classes too small to fill K."""

import json
from collections import Counter

import numpy as np
import pytest

from tests import distributed_balanced_case as case
from tests.conftest import spawn_gloo
from tests.data_helpers import batches, jpeg, saved
from vlcontrast.data.bad_data import BadData
from vlcontrast.data.balanced import BalancedDataset, build_index, check_index, epoch_plan
from vlcontrast.data.batching import Collate, make_loader, ordered_batches
from vlcontrast.data.decode import Decoder
from vlcontrast.data.image import CropResize
from vlcontrast.data.shard_writer import write_shards
from vlcontrast.data.shards import DataError, DataPosition
from vlcontrast.data.sources import parse_sources

P, K = 3, 2
# 7 classes of uneven sizes: 10, 9, 8, ... 4 samples (49 in all), 3 shards
SIZES = [10, 9, 8, 7, 6, 5, 4]


def labelled(n_per_class=SIZES, first=0):
    samples = []
    for label, n in enumerate(n_per_class):
        for j in range(n):
            key = f"c{label}_{j:02d}"
            samples.append(
                {"__key__": key, "jpg": jpeg((label * 30, j * 10, 0)), "cls": str(label)}
            )
    order = np.random.default_rng(first).permutation(len(samples))
    return [samples[i] for i in order]


@pytest.fixture
def pattern(tmp_path):
    write_shards(labelled(), tmp_path / "bal", per_shard=17)
    return str(tmp_path / "bal" / "{00000..00002}.tar")


def balanced_dataset(pattern: str, seed: int = 0) -> BalancedDataset:
    sources = parse_sources(pattern, ())
    urls = [u for s in sources for u in s.urls]
    index = build_index(urls, ("jpg",), "cls")
    decoder = Decoder(CropResize(8, "random_resized"), caption_key="", label_key="cls")
    ds = BalancedDataset(sources, decoder, Collate(None), P * K, seed=seed, index=index)
    ds.classes, ds.per_class = P, K
    return ds


def epoch_batches(ds: BalancedDataset, workers: int, streams: int) -> list:
    position = DataPosition()
    position.reset(streams)
    ds.position = position
    loader = make_loader(ds, workers)
    return [
        [batch["keys"], batch["labels"].tolist()]
        for batch in ordered_batches(loader, position, BadData().add)
    ]


def check_pk(keys, labels):
    """P distinct classes x K samples each, keys agreeing with labels."""
    counts = Counter(labels)
    assert len(counts) == P and set(counts.values()) == {K}
    assert [int(k[1 : k.index("_")]) for k in keys] == labels


def test_plan_is_p_by_k_uses_each_sample_once_and_leaves_less_than_p_classes():
    labels = np.repeat(np.arange(len(SIZES)), SIZES)
    plan = epoch_plan(labels, P, K, seed=0, epoch=0)
    used = np.concatenate(plan)
    assert len(used) == len(set(used.tolist()))  # no repeat
    for batch in plan:
        check_pk([f"c{labels[i]}_" for i in batch], labels[batch].tolist())
    # what is left: each class's remainder (< K) plus whole groups of fewer than P classes
    left = Counter(labels.tolist()) - Counter(labels[used].tolist())
    whole_groups = {c: n // K for c, n in left.items() if n // K}
    assert len(whole_groups) < P
    assert len(plan) >= (sum(n // K for n in SIZES) - 2 * K) // P  # few groups unused
    # reshuffled per epoch, fixed per seed
    again = epoch_plan(labels, P, K, seed=0, epoch=0)
    assert all(np.array_equal(a, b) for a, b in zip(plan, again, strict=True))
    other = epoch_plan(labels, P, K, seed=0, epoch=1)
    assert any(not np.array_equal(a, b) for a, b in zip(plan, other, strict=False))


def test_index_reads_cls_and_json_labels_and_counts_the_unlabelled(tmp_path):
    samples = [
        {"__key__": "a", "jpg": jpeg(), "cls": "3"},
        {"__key__": "b", "jpg": jpeg(), "json": json.dumps({"label": 5}).encode()},
        {"__key__": "c", "jpg": jpeg()},  # no label
        {"__key__": "d", "cls": "1"},  # no image
    ]
    write_shards(samples, tmp_path, per_shard=10)
    url = str(tmp_path / "00000.tar")
    assert build_index([url], ("jpg",), "cls").label == [3]
    index = build_index([url], ("jpg",), "json.label")
    assert index.key == ["b"] and index.label == [5]
    assert index.skipped == {"missing_label": 2, "missing_image": 1}
    assert index.raw(0)["jpg"] == samples[1]["jpg"]  # read back by offset


@pytest.mark.parametrize("workers", [0, 2])
def test_one_epoch_is_p_by_k_batches_of_the_plan_in_order(pattern, workers):
    ds = balanced_dataset(pattern)
    got = epoch_batches(ds, workers, streams=2)
    plan = epoch_plan(ds.index.label, P, K, 0, 0)
    assert [keys for keys, _ in got] == [[ds.index.key[i] for i in b] for b in plan]
    for keys, labels in got:
        check_pk(keys, labels)


def test_resume_mid_epoch_gives_the_uninterrupted_batches(pattern):
    ds = balanced_dataset(pattern)
    whole = [b["keys"] for b in batches(ds, 2, DataPosition(), 12)]  # into the second epoch
    position = DataPosition()
    first = [b["keys"] for b in batches(balanced_dataset(pattern), 2, position, 5)]
    rest = [b["keys"] for b in batches(balanced_dataset(pattern), 1, saved(position), 7)]
    assert first + rest == whole
    images = [b["images"] for b in batches(balanced_dataset(pattern), 0, DataPosition(), 12)]
    position = DataPosition()
    batches(balanced_dataset(pattern), 0, position, 5)
    resumed = [b["images"] for b in batches(balanced_dataset(pattern), 0, saved(position), 7)]
    assert all(np.array_equal(a, b) for a, b in zip(images[5:], resumed, strict=True))


def test_classes_smaller_than_k_are_named_and_too_few_classes_refused(pattern):
    index = balanced_dataset(pattern).index
    notes = check_index(index, classes=3, per_class=6)
    assert "2 class(es) have fewer samples" in notes[0] and "class 5: 5, class 6: 4" in notes[0]
    with pytest.raises(DataError, match="only 2 class"):
        check_index(index, classes=3, per_class=9)


def test_a_bad_image_drops_its_batch_and_is_counted(tmp_path):
    samples = labelled([4, 4, 4])
    samples[0]["jpg"] = b"not a jpeg"
    write_shards(samples, tmp_path, per_shard=100)
    ds = balanced_dataset(str(tmp_path / "00000.tar"))
    bad = BadData()
    position = DataPosition()
    position.reset(1)
    ds.position = position
    got = list(ordered_batches(make_loader(ds, 0), position, bad.add))
    assert len(got) == 1  # the plan has 2 batches; the one holding the bad image is dropped
    assert bad.skipped == 1 and all(len(b["keys"]) == P * K for b in got)


@pytest.mark.slow  # multi-process: the README's command runs it
def test_an_epoch_is_covered_exactly_across_two_ranks_and_two_workers(pattern, tmp_path):
    out = tmp_path / "batches.json"
    spawn_gloo(case.worker, 2, tmp_path, pattern, str(out))
    per_rank = json.loads(out.read_text())
    ds = balanced_dataset(pattern)
    plan = epoch_plan(ds.index.label, P, K, 0, 0)
    planned = sorted(ds.index.key[i] for b in plan for i in b)
    got = [k for rank in per_rank for keys, labels in rank for k in keys]
    assert sorted(got) == planned and len(set(got)) == len(got)  # each planned sample once
    assert all(per_rank)
    for rank in per_rank:
        for keys, labels in rank:
            check_pk(keys, labels)


def balanced_run(corpus, out_dir, steps=4) -> list[str]:
    from tests.test_ssl_objectives import image_run

    return [
        *image_run(corpus, out_dir, "metric", steps=steps),
        "data.sampler=class_balanced",
        "data.samples_per_class=4",  # batch 16: 4 classes x 4
    ]


def test_metric_learning_on_balanced_batches_resumes_exactly_through_the_cli(
    corpus, tmp_path, monkeypatch, capsys
):
    from tests.conftest import crash_after
    from vlcontrast import cli
    from vlcontrast.train.metrics_log import read_jsonl

    full, parted = tmp_path / "full", tmp_path / "parted"
    assert cli.main(balanced_run(corpus, full)) == 0
    assert "data.sampler=class_balanced:" in capsys.readouterr().out
    restore = crash_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        cli.main(balanced_run(corpus, parted))
    restore()
    assert cli.main([*balanced_run(corpus, parted), "train.resume=latest"]) == 0

    def losses(run):
        rows = read_jsonl(run / "metrics.jsonl")
        return {
            r["step"]: (r["train/loss"], r["train/triplets"]) for r in rows if "train/loss" in r
        }

    assert losses(parted) == losses(full) and sorted(losses(full)) == [1, 2, 3, 4]


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "data.samples_per_class=5",
            "data.samples_per_class: data.batch_size=16 must be a multiple",
        ),
        ("data.mode=resampled", "data.sampler: class_balanced plans epochs"),
        ("objective.name=simclr", "data.sampler: class_balanced batches are for labelled"),
    ],
)
def test_a_balanced_run_that_cannot_work_is_one_message(
    corpus, tmp_path, capsys, override, message
):
    from vlcontrast import cli

    assert cli.main([*balanced_run(corpus, tmp_path), override]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "checkpoints").exists()
