"""Every skip reason reaches the final counts of every tool that reads shards: training, zero-shot
evaluation and ``index build`` each read one shard set holding every kind of bad sample, and
each reports exactly the planted numbers for the fields it needs (a truncated shard too: the
index builder lost it when its counter was swapped out after each batch)."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import run_file, tiny_overrides
from vlcontrast import cli
from vlcontrast import config as config_lib
from vlcontrast.data.shard_writer import write_shards
from vlcontrast.data.sources import parse_sources
from vlcontrast.data.tar_reader import iter_samples
from vlcontrast.search.build import BuildOptions, build_index
from vlcontrast.search.units import SourceSpec
from vlcontrast.train import checkpoint, loop


def huge_png() -> bytes:
    """56 megapixels in a few kB: over data.max_pixels from its header."""
    buffer = io.BytesIO()
    Image.new("1", (8000, 7000)).save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


# one defect per sample: (what is done to a good sample, the reason it is skipped with)
DEFECTS = {
    "corrupt_image": lambda s: s.update(jpg=b"not a jpeg at all"),
    "missing_image": lambda s: s.pop("jpg"),
    "too_large": lambda s: (s.pop("jpg"), s.update(png=huge_png())),
    "missing_caption": lambda s: s.pop("txt"),
    "empty_caption": lambda s: s.update(txt="   "),
    "bad_caption_encoding": lambda s: s.update(txt=b"\xff\xfe\xfa"),
    "missing_label": lambda s: s.pop("cls"),
    "bad_label": lambda s: s.update(cls="not-a-number"),
}
IMAGE = {"corrupt_image", "missing_image", "too_large", "truncated_shard"}
CAPTION = {"missing_caption", "empty_caption", "bad_caption_encoding"}
LABEL = {"missing_label", "bad_label"}


@pytest.fixture(scope="module")
def bad_shards(corpus, tmp_path_factory) -> str:
    """One shard: 12 good samples, one per defect, then a sample cut mid-member (the shard is
    truncated there). The bad ones come after the good ones, so a run of 4 batches of 4 reads
    the whole shard once (3 batches; the 2 samples left over at the epoch's end are dropped)
    and the first 4 good samples again."""
    out = tmp_path_factory.mktemp("bad_shards")
    (url,) = parse_sources(corpus["heldout_shards"])[0].urls
    good = [
        {k: v for k, v in raw.items() if k != "__url__"}
        for raw in iter_samples(url, lambda reason: None)
    ]
    samples = good[:12]
    for i, (reason, damage) in enumerate(DEFECTS.items()):
        sample = dict(good[12 + i], __key__=f"bad_{reason}")
        damage(sample)
        samples.append(sample)
    write_shards([*samples, good[30]], out, per_shard=len(samples) + 1)
    shard = out / "00000.tar"
    *_, last = iter_samples(str(shard), lambda reason: None, offsets=True)
    offset, _ = min(last["__offsets__"].values())
    shard.write_bytes(shard.read_bytes()[: offset + 10])
    shutil.copy(Path(url).parent / "classes.json", out / "classes.json")
    return str(shard)


def planted(reasons: set[str]) -> dict[str, int]:
    return {reason: 1 for reason in reasons}


def test_training_counts_every_planted_skip(bad_shards, corpus, tmp_path):
    overrides = tiny_overrides(corpus, tmp_path / "run", steps=4)
    overrides += [f"data.train_shards={bad_shards}", "data.batch_size=4", "data.shuffle_buffer=1"]
    summary = loop.train(config_lib.load(None, overrides))
    assert summary["skipped"] == planted(IMAGE | CAPTION)


def test_evaluation_counts_every_planted_skip(bad_shards, corpus, tmp_path):
    overrides = tiny_overrides(corpus, tmp_path / "run", steps=1)
    assert cli.main(["train", run_file(tmp_path), *overrides]) == 0
    ckpt = checkpoint.latest(tmp_path / "run" / "checkpoints")
    report = tmp_path / "zs.json"
    args = ["eval", "zeroshot", "--checkpoint", str(ckpt), "--data", bad_shards]
    assert cli.main([*args, "--workers", "0", "--json", str(report)]) == 0
    assert json.loads(report.read_text())["zeroshot"]["skipped"] == planted(IMAGE | LABEL)

    options = BuildOptions(batch_size=2, num_workers=0, progress=False)  # batches per shard
    summary = build_index(tmp_path / "index", [SourceSpec(bad_shards)], ckpt, options)
    assert summary["skipped"] == planted(IMAGE), summary
