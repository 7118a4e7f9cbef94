"""The loss plug-ins end to end through the CLI: SigLIP, tiled CLIP and gradient caching."""

import json
import math
import os
import subprocess
import sys

import pytest

from tests.conftest import run_file, tiny_overrides
from vlcontrast import cli
from vlcontrast.models import DualEncoder
from vlcontrast.models.load import load_model
from vlcontrast.train import checkpoint
from vlcontrast.train.metrics_log import read_jsonl

NO_DROPOUT = (
    "text.config={model_type: bert, vocab_size: 64, hidden_size: 32, num_hidden_layers: 1, "
)
NO_DROPOUT += "num_attention_heads: 2, intermediate_size: 64, max_position_embeddings: 32, "
NO_DROPOUT += "hidden_dropout_prob: 0.0, attention_probs_dropout_prob: 0.0}"


def train_rows(run_dir) -> list[dict]:
    return [r for r in read_jsonl(run_dir / "metrics.jsonl") if "train/loss" in r]


def test_siglip_trains_and_reloads(corpus, tmp_path):
    overrides = [*tiny_overrides(corpus, tmp_path, steps=3), "objective.name=siglip"]
    assert cli.main(["train", run_file(tmp_path), *overrides]) == 0
    rows = train_rows(tmp_path)
    assert len(rows) == 3 and all(math.isfinite(r["train/loss"]) for r in rows)
    # SigLIP's defaults: logit scale starts at ln 10 (t = 10), bias at -10.
    assert rows[0]["train/logit_scale"] == pytest.approx(10.0, rel=1e-2)
    assert rows[0]["train/logit_bias"] == pytest.approx(-10.0, abs=0.1)
    model, _, cfg = load_model(checkpoint.latest(tmp_path / "checkpoints"))
    assert isinstance(model, DualEncoder) and cfg.objective.name == "siglip"
    assert model.logit_bias is not None and cfg.model.logit_bias is True


def test_tiled_and_grad_cached_training_matches_the_plain_run(corpus, tmp_path):
    """Same data, no dropout: tiled loss + 2 micro-batches follows the plain run's losses."""
    plain, cached = tmp_path / "plain", tmp_path / "cached"
    base = [*tiny_overrides(corpus, plain, steps=3), NO_DROPOUT, "objective.clip.tiled=off"]
    assert cli.main(["train", run_file(plain), *base]) == 0
    other = [*tiny_overrides(corpus, cached, steps=3), NO_DROPOUT]
    other += ["objective.clip.tiled=on", "objective.clip.tile_size=5"]
    other.append("train.grad_cache_steps=2")
    assert cli.main(["train", run_file(cached), *other]) == 0
    want, got = train_rows(plain), train_rows(cached)
    assert len(want) == len(got) == 3
    for a, b in zip(want, got, strict=True):
        assert b["train/loss"] == pytest.approx(a["train/loss"], rel=1e-4)
        assert b["train/grad_norm"] == pytest.approx(a["train/grad_norm"], rel=1e-3)


@pytest.mark.parametrize(
    "override, message",
    [
        ("objective.name=dinov2", "objective.name: unknown value 'dinov2'"),
        ("objective.clip.gather=all", "objective.clip.gather: expected one of local, global"),
        ("objective.clip.tiled=yes", "objective.clip.tiled: expected one of auto, on, off"),
        ("loss.tiled=yes", "objective.clip.tiled: expected one of auto, on, off"),  # old name
        ("train.grad_cache_steps=0", "train.grad_cache_steps: expected a positive number"),
    ],
)
def test_bad_loss_settings_name_the_key(corpus, tmp_path, capsys, override, message):
    overrides = [*tiny_overrides(corpus, tmp_path, steps=1), override]
    assert cli.main(["train", run_file(tmp_path), *overrides]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow  # multi-process end to end: the README's command runs it
def test_two_process_training_under_torchrun(corpus, tmp_path):
    """The real launcher: 2 gloo processes through accelerate, tiled CLIP and gradient caching
    (DDP no_sync for all but the last micro-batch). Rank 0 alone writes logs and checkpoints."""
    overrides = [*tiny_overrides(corpus, tmp_path, steps=2), "data.batch_size=8"]
    # train.epochs with 2 ranks: 256 samples / (8 x 2) per step x 0.125 epochs = 2 steps
    overrides = [o for o in overrides if not o.startswith("train.steps=")]
    overrides.append("train.epochs=0.125")
    overrides += ["objective.clip.tiled=on", "objective.clip.tile_size=4"]
    overrides.append("train.grad_cache_steps=2")
    overrides.append("train.ema=0.9")  # the average of weights that DDP keeps equal on each rank
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    cmd += ["-m", "vlcontrast.cli", "train", run_file(tmp_path), *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = train_rows(tmp_path)
    assert [r["step"] for r in rows] == [1, 2]
    assert all(math.isfinite(r["train/loss"]) for r in rows)
    saved = json.loads((tmp_path / "config.json").read_text())["train"]
    assert saved["steps"] == 2 and saved["epochs"] == 0  # a resume trains the same steps
    assert "train.epochs=0.125: 256 samples / global batch 16 -> train.steps=2" in done.stdout
    ckpts = checkpoint.all_checkpoints(tmp_path / "checkpoints")
    assert [p.name for p in ckpts] == ["step_00000002"]
    assert checkpoint.load_state(ckpts[0])["parts"]["ema"]["weights"]
