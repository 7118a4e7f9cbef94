"""The seams every method builds on: one sample pipeline for training and evaluation, image-only
sources and models, and objectives whose state survives kill + resume exactly."""

from __future__ import annotations

import io
import math
import random

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from tests.conftest import crash_after, run_file, tiny_overrides
from tests.data_helpers import batches
from vlcontrast import cli, objectives
from vlcontrast.config import Config
from vlcontrast.data.bad_data import BadData
from vlcontrast.data.batching import Collate
from vlcontrast.data.collection import EvalDataset, ShardSource
from vlcontrast.data.decode import Decoder
from vlcontrast.data.image import CropResize
from vlcontrast.data.shard_writer import write_shards
from vlcontrast.data.shards import DataPosition, ShardDataset
from vlcontrast.data.sources import parse_sources
from vlcontrast.data.tar_reader import iter_samples
from vlcontrast.embed import eval_transform
from vlcontrast.models.load import load_model
from vlcontrast.objectives.base import Objective
from vlcontrast.train import checkpoint
from vlcontrast.train.data_setup import build_train_data
from vlcontrast.train.metrics_log import read_jsonl


def png_16_bit() -> bytes:
    ramp = (np.arange(40 * 30, dtype=np.uint16).reshape(30, 40) * 53) % 65535
    buffer = io.BytesIO()
    Image.fromarray(ramp.astype(np.uint16)).save(buffer, format="PNG")  # mode I;16
    return buffer.getvalue()


def png_palette_with_transparency() -> bytes:
    img = Image.new("P", (40, 30))
    img.putpalette([0, 0, 0, 200, 30, 30, 20, 40, 230])
    for x in range(40):
        for y in range(30):
            img.putpixel((x, y), (x // 5 + y // 5) % 3)
    img.info["transparency"] = 0  # index 0 (black) is transparent: white when composited
    buffer = io.BytesIO()
    img.save(buffer, format="PNG", transparency=0)
    return buffer.getvalue()


def jpeg_cmyk() -> bytes:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (30, 40, 4), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "CMYK").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.mark.parametrize("make", [png_16_bit, png_palette_with_transparency, jpeg_cmyk])
def test_the_same_file_is_the_same_tensor_in_training_and_evaluation(tmp_path, make):
    data = make()
    ext = "png" if data[:4] == b"\x89PNG" else "jpg"
    write_shards([{"__key__": "a", ext: data, "txt": "x", "cls": "0"}], tmp_path, per_shard=1)
    shard = str(tmp_path / "00000.tar")
    cfg = Config()
    cfg.image.image_size, cfg.data.crop, cfg.data.train_shards = 16, "center", shard
    train_set, _ = build_train_data(cfg, tokenizer=None)
    (raw,) = list(iter_samples(shard, lambda reason: None))
    train_image = train_set.decode(raw, random.Random(0))["image"]
    eval_set = EvalDataset(ShardSource(shard, "", "", ""), eval_transform(cfg), need_label=True)
    (sample,) = list(eval_set)
    assert train_image.dtype == sample["image"].dtype == torch.uint8
    assert train_image.shape == (3, 16, 16)
    assert torch.equal(train_image, sample["image"])


class QueueObjective(Objective):
    """An image-only objective with state, as MoCo's: a queue of past embeddings that the loss
    reads, a write pointer and a step counter, all buffers updated in ``after_step``."""

    modalities = ("image",)

    def __init__(self, cfg=None):
        super().__init__()
        self.pending = None

    def setup(self, model, cfg, global_batch):
        super().setup(model, cfg, global_batch)
        self.register_buffer("queue", torch.zeros(8, model.image.num_features))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def outputs(self, batch):
        return {"img_emb": self.model(images=batch["images"])["img_emb"]}

    def loss(self, outputs, batch):
        img_emb = outputs["img_emb"]
        logits = img_emb @ self.queue.T / 0.1  # (B, K)
        loss = logits.logsumexp(dim=-1).mean() + (1 - img_emb[:, 0]).mean()
        self.pending = img_emb.detach()[:4]
        return {"loss": loss, "metrics": {"queue_sum": float(self.queue.sum())}}

    def after_step(self, step):
        start = int(self.ptr)
        self.queue[start : start + 4] = self.pending
        self.ptr.fill_((start + 4) % len(self.queue))
        self.steps.fill_(step)


@pytest.fixture
def image_only_shards(corpus, tmp_path):
    """The corpus's training images without captions (only ``jpg`` and ``cls`` members)."""
    samples = []
    for url in parse_sources(corpus["train_shards"])[0].urls:
        for raw in iter_samples(url, lambda reason: None):
            samples.append({"__key__": raw["__key__"], "jpg": raw["jpg"], "cls": raw["cls"]})
    write_shards(samples, tmp_path / "images", per_shard=64)
    return str(tmp_path / "images" / "{00000..00003}.tar")


def test_a_source_without_captions_streams_images_only(image_only_shards):
    decoder = Decoder(CropResize(8), caption_key="")
    ds = ShardDataset(parse_sources(image_only_shards), decoder, Collate(), batch_size=4)
    bad = BadData()
    (batch,) = batches(ds, 0, DataPosition(), 1, bad)
    assert batch["images"].shape == (4, 3, 8, 8) and "input_ids" not in batch
    assert set(batch) == {"images", "keys"}  # the loader's control fields travel beside it
    assert bad.seen == 4 and not bad.skipped


def image_run(shards, out_dir, steps=4) -> list[str]:
    overrides = tiny_overrides({"train_shards": shards, "tokenizer": "unused"}, out_dir, steps)
    overrides += ["model.kind=image", "objective.name=queue_test"]
    return ["train", run_file(out_dir), *overrides]


def test_an_image_only_model_and_a_stateful_objective_resume_exactly(
    image_only_shards, corpus, tmp_path, monkeypatch, capsys
):
    """The same loop and checkpoint code as CLIP: image-only model, caption-less shards, and an
    objective whose buffers (queue, pointer, step counter) come back bit-identical after a
    kill + resume, with the same losses as the uninterrupted run."""
    monkeypatch.setitem(objectives.OBJECTIVES, "queue_test", QueueObjective)
    full, parted = tmp_path / "full", tmp_path / "parted"
    assert cli.main(image_run(image_only_shards, full)) == 0

    restore = crash_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        cli.main(image_run(image_only_shards, parted))
    restore()
    assert cli.main([*image_run(image_only_shards, parted), "train.resume=latest"]) == 0

    def losses(run):
        rows = read_jsonl(run / "metrics.jsonl")
        return {
            r["step"]: (r["train/loss"], r["train/queue_sum"]) for r in rows if "train/loss" in r
        }

    want, got = losses(full), losses(parted)
    assert sorted(got) == [1, 2, 3, 4] and all(math.isfinite(v[0]) for v in got.values())
    assert got == want  # bit-exact: same data order, same queue, same RNG
    a, b = (checkpoint.latest(run / "checkpoints") for run in (full, parted))
    state_a = checkpoint.load_state(a)["parts"]["objective"]
    state_b = checkpoint.load_state(b)["parts"]["objective"]
    assert set(state_a) == {"queue", "ptr", "steps"} and int(state_b["steps"]) == 4
    for name in state_a:
        assert torch.equal(state_a[name], state_b[name]), name
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert not any(k.startswith("text.") for k in wa)
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name

    # The image-only checkpoint evaluates through the same CLI (kNN on backbone embeddings).
    model, tokenizer, cfg = load_model(b)
    assert tokenizer is None and cfg.model.kind == "image"
    heldout = corpus["heldout_shards"]
    args = ["eval", "knn", "--checkpoint", str(b), "--data", heldout, "--train-data", heldout]
    capsys.readouterr()
    assert cli.main([*args, "--k", "5", "--workers", "0"]) == 0
    assert "top1" in capsys.readouterr().out


def test_multi_view_decodes_once_and_cuts_k_seeded_views(monkeypatch):
    """K views from one decode (at the largest reduction that suits every view), each its own
    crop, repeated exactly from the same per-sample seed."""
    import vlcontrast.data.transforms as transforms_module
    from vlcontrast.data.image import decode_image
    from vlcontrast.data.transforms import MultiView

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    data = buffer.getvalue()
    calls = []
    real = transforms_module.decode_reduced
    monkeypatch.setattr(
        transforms_module, "decode_reduced", lambda img, s: calls.append(s) or real(img, s)
    )
    flip = lambda image, r: image.flip(-1) if r.random() < 2 else image  # noqa: E731
    views = MultiView([CropResize(32, "random_resized", (0.2, 1.0))] * 2, [None, flip])
    one = decode_image(data, views, random.Random(7))
    assert one.shape == (2, 3, 32, 32) and one.dtype == torch.uint8
    assert len(calls) == 1 and calls[0] >= 2  # one (reduced) decode for both views
    assert not torch.equal(one[0], one[1])  # two different crops
    again = decode_image(data, views, random.Random(7))
    assert torch.equal(one, again)
    assert not torch.equal(one, decode_image(data, views, random.Random(8)))
