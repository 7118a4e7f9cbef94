"""Model EMA (train/ema.py, ``train.ema``): the update is the formula with timm's warm-up, the
average resumes bit-exactly after a kill, and eval and export read it with ``--weights ema``."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from tests.conftest import crash_after, run_file, tiny_overrides
from vlcontrast import cli
from vlcontrast.train import checkpoint
from vlcontrast.train.ema import ModelEma, ema_decay


def test_the_average_is_the_formula_with_timms_warmup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).double()
    ema = ModelEma(model, decay=0.99, warmup=True)
    want = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for step in range(1, 6):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model(torch.randn(5, 3, dtype=torch.float64))  # moves the batch-norm statistics
        d = min(0.99, 1 - (1 + step) ** (-2 / 3))
        assert ema_decay(step, 0.99, True) == d and ema_decay(step, 0.99, False) == 0.99
        for name, value in model.state_dict().items():
            if value.is_floating_point():
                want[name] = d * want[name] + (1 - d) * value
            else:
                want[name] = value.clone()
        ema.update(step)
        for name, value in want.items():
            torch.testing.assert_close(ema.shadow[name], value, rtol=1e-12, atol=1e-14)
    assert ema.shadow["1.num_batches_tracked"] == 5  # counters copied, not averaged
    assert ema_decay(10**6, 0.99, True) == 0.99  # the warm-up ends at the set decay


def ema_run(corpus, out, steps=4):
    return ["train", run_file(out), *tiny_overrides(corpus, out, steps), "train.ema=0.9"]


def test_the_ema_resumes_bit_exactly_and_eval_and_export_read_it(
    corpus, tmp_path, monkeypatch, capsys
):
    full, parted = tmp_path / "full", tmp_path / "parted"
    assert cli.main(ema_run(corpus, full)) == 0
    restore = crash_after(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        cli.main(ema_run(corpus, parted))
    restore()
    assert cli.main([*ema_run(corpus, parted), "train.resume=latest"]) == 0
    a, b = (checkpoint.latest(run / "checkpoints") for run in (full, parted))
    ema_a = checkpoint.load_state(a)["parts"]["ema"]["weights"]
    ema_b = checkpoint.load_state(b)["parts"]["ema"]["weights"]
    weights = load_file(a / "model.safetensors")
    assert set(ema_a) >= set(weights)
    for name in ema_a:
        assert torch.equal(ema_a[name], ema_b[name]), name
    assert any(not torch.equal(ema_a[k], weights[k]) for k in weights)  # an average, not a copy

    flat = tmp_path / "ema.safetensors"
    args = ["export", str(a), "--to", "safetensors", str(flat), "--weights", "ema"]
    assert cli.main(args) == 0
    exported = load_file(flat)
    for name, value in exported.items():
        assert torch.equal(value, ema_a[name]), name
    eval_args = ["eval", "zeroshot", "--checkpoint", str(a), "--data", corpus["heldout_shards"]]
    assert cli.main([*eval_args, "--workers", "0", "--weights", "ema"]) == 0
    no_ema = tiny_overrides(corpus, tmp_path / "plain", 2)
    assert cli.main(["train", run_file(tmp_path / "plain"), *no_ema]) == 0
    plain = checkpoint.latest(tmp_path / "plain" / "checkpoints")
    capsys.readouterr()
    assert (
        cli.main(["export", str(plain), "--to", "safetensors", str(flat), "--weights", "ema"]) == 2
    )
    assert "holds no EMA weights" in capsys.readouterr().err
