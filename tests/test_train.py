"""End to end through the real entry point: smoke run, resume, divergence, demo, eval."""

import json
import math
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import crash_after, run_file, tiny_overrides
from vlcontrast import cli
from vlcontrast.objectives.clip import CLIPObjective
from vlcontrast.train import checkpoint
from vlcontrast.train.metrics_log import read_jsonl


def train_losses(run_dir) -> dict[int, float]:
    rows = read_jsonl(run_dir / "metrics.jsonl")
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def test_smoke_run_through_the_cli(corpus, tmp_path, capsys):
    assert cli.main(["train", run_file(tmp_path), *tiny_overrides(corpus, tmp_path, steps=4)]) == 0
    losses = train_losses(tmp_path)
    assert sorted(losses) == [1, 2, 3, 4] and all(math.isfinite(v) for v in losses.values())
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["data"]["batch_size"] == 16 and saved["train"]["steps"] == 4
    ckpts = checkpoint.all_checkpoints(tmp_path / "checkpoints")
    assert [p.name for p in ckpts] == ["step_00000002", "step_00000004"]
    for name in [
        "model.safetensors",
        "state.json",
        "state.safetensors",
        "config.json",
        "tokenizer",
    ]:
        assert (ckpts[-1] / name).exists(), name
    out = capsys.readouterr().out
    assert f"checkpoint: {ckpts[-1]}" in out and f"curves: {tmp_path / 'curves.png'}" in out
    assert f"vlcontrast eval zeroshot --checkpoint {ckpts[-1]}" in out  # what to run next
    from PIL import Image

    with Image.open(tmp_path / "curves.png") as curves:  # loss and lr panels, drawn
        assert curves.height >= 2 * 180 and curves.convert("L").getextrema()[0] < 100


def test_bf16_autocast_after_an_fp32_run_in_the_same_process(corpus, tmp_path):
    fp32 = [*tiny_overrides(corpus, tmp_path / "fp32", steps=2), "train.precision=no"]
    assert cli.main(["train", run_file(tmp_path / "fp32"), *fp32]) == 0
    bf16 = [*tiny_overrides(corpus, tmp_path / "bf16", steps=2), "train.precision=bf16"]
    assert cli.main(["train", run_file(tmp_path / "bf16"), *bf16]) == 0
    losses = train_losses(tmp_path / "bf16")
    assert sorted(losses) == [1, 2] and all(math.isfinite(v) for v in losses.values())


@pytest.mark.parametrize("workers_after", [0, 2])
def test_resume_gives_the_same_losses_as_an_uninterrupted_run(
    corpus, tmp_path, monkeypatch, workers_after
):
    """Also when the resumed run uses another worker count (the data order is by stream)."""
    full, parted = tmp_path / "full", tmp_path / "parted"
    assert cli.main(["train", run_file(full), *tiny_overrides(corpus, full, steps=4)]) == 0

    restore = crash_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        cli.main(["train", run_file(parted), *tiny_overrides(corpus, parted, steps=4)])
    restore()
    assert checkpoint.latest(parted / "checkpoints").name == "step_00000002"
    resumed = [*tiny_overrides(corpus, parted, steps=4), "train.resume=latest"]
    resumed.append(f"data.num_workers={workers_after}")
    assert cli.main(["train", run_file(parted), *resumed]) == 0

    want, got = train_losses(full), train_losses(parted)
    assert sorted(got) == [1, 2, 3, 4]
    for step in want:
        assert got[step] == pytest.approx(want[step], rel=1e-6, abs=1e-7), step
    a = checkpoint.latest(full / "checkpoints")
    b = checkpoint.latest(parted / "checkpoints")
    from safetensors.torch import load_file

    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=1e-5, atol=1e-6, msg=name)


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(
    corpus, tmp_path, monkeypatch, capsys
):
    real = CLIPObjective.loss
    calls = {"n": 0}

    def nan_on_third(self, outputs, batch):
        out = real(self, outputs, batch)
        calls["n"] += 1
        if calls["n"] == 3:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(CLIPObjective, "loss", nan_on_third)
    assert cli.main(["train", run_file(tmp_path), *tiny_overrides(corpus, tmp_path, steps=4)]) == 3
    err = capsys.readouterr().err
    assert "loss became nan at step 3" in err and "step_00000002" in err
    last = checkpoint.latest(tmp_path / "checkpoints")
    assert last.name == "step_00000002"
    assert checkpoint.load_state(last)["step"] == 2


def test_bad_config_in_the_cli_is_one_clear_message(corpus, tmp_path, capsys):
    assert cli.main(["train", run_file(tmp_path), "optim.lr=fast"]) == 2
    assert "optim.lr: expected float, got 'fast'" in capsys.readouterr().err
    overrides = [*tiny_overrides(corpus, tmp_path), "text.config.vocab_size=8"]
    assert cli.main(["train", run_file(tmp_path), *overrides]) == 2
    assert "text.config.vocab_size" in capsys.readouterr().err


@pytest.mark.slow  # multi-process end to end: the README's command runs it
def test_demo_then_eval_reproduces_the_accuracy(tmp_path, capsys):
    out = tmp_path / "demo"
    small = ["train.steps=3", "train.save_every=3", "train.log_every=1", "train.progress=false"]
    assert cli.main(["demo", "--out", str(out), *small]) == 0
    summary = json.loads((out / "demo_summary.json").read_text())
    for key in ["zeroshot_top1", "chance", "steps", "samples_per_s"]:
        assert key in summary
    assert summary["steps"] == 3 and summary["chance"] == pytest.approx(1 / 30)
    assert len(summary["query_top5"]) == 5
    assert (out / "query.png").stat().st_size > 1000
    assert (Path(summary["index"]) / "index.json").is_file()  # the held-out images, searchable
    assert 0 <= summary["search_class_top1"] <= 1
    assert f"vlcontrast serve {summary['index']}" in capsys.readouterr().out
    held = sorted((out / "data" / "heldout").glob("*.tar"))
    pattern = str(held[0].parent / f"{{00000..{len(held) - 1:05d}}}.tar")
    report = tmp_path / "eval.json"
    args = ["eval", "zeroshot", "--checkpoint", summary["checkpoint"], "--data", pattern]
    capsys.readouterr()
    assert cli.main([*args, "--json", str(report)]) == 0
    result = json.loads(report.read_text())["zeroshot"]
    assert result["metrics"]["top1"] == summary["zeroshot_top1"]  # exactly, not approximately
    assert f"{summary['zeroshot_top1']:.4f}" in capsys.readouterr().out
    assert len(result["confusion"]) == 30 and len(result["classnames"]) == 30
    assert (tmp_path / "eval.confusion.png").stat().st_size > 1000


def test_epochs_give_the_step_count_from_the_dataset_size(corpus, tmp_path, capsys):
    overrides = [o for o in tiny_overrides(corpus, tmp_path) if not o.startswith("train.steps=")]
    assert cli.main(["train", run_file(tmp_path), *overrides, "train.epochs=0.25"]) == 0
    assert "256 samples / global batch 16 -> train.steps=4" in capsys.readouterr().out
    assert sorted(train_losses(tmp_path)) == [1, 2, 3, 4]
    both = [*overrides, "train.epochs=1", "train.steps=3", f"train.output_dir={tmp_path}/b"]
    assert cli.main(["train", run_file(tmp_path), *both]) == 2
    assert "set exactly one of train.steps and train.epochs" in capsys.readouterr().err


def ctrl_c_after(monkeypatch, batches: int, times: int = 1):
    """Send this process SIGINT ``times`` times when the ``batches``-th batch is fetched, as a
    user's Ctrl-C would arrive mid-step."""
    import os
    import signal

    from vlcontrast.train import loop

    real = loop.iterate_epochs

    def interrupted(*args, **kwargs):
        for index, batch in enumerate(real(*args, **kwargs)):
            if index == batches:
                for _ in range(times):
                    os.kill(os.getpid(), signal.SIGINT)
            yield batch

    monkeypatch.setattr(loop, "iterate_epochs", interrupted)
    return lambda: monkeypatch.setattr(loop, "iterate_epochs", real)


def test_ctrl_c_finishes_the_step_saves_and_resumes_exactly(corpus, tmp_path, monkeypatch, capsys):
    """With DINO's weight-decay cosine (0.04 -> 0.4) on, which the loop sets every step."""
    decay = ["train.save_every=10", "optim.weight_decay=0.04", "optim.weight_decay_end=0.4"]
    base = [*tiny_overrides(corpus, tmp_path / "whole", steps=5), *decay]
    assert cli.main(["train", run_file(tmp_path / "whole"), *base]) == 0
    whole = losses(tmp_path / "whole")
    saved = checkpoint.latest(tmp_path / "whole" / "checkpoints") / checkpoint.STATE_JSON
    groups = json.loads(saved.read_text())["parts"]["optimizer"]["param_groups"]
    last = 0.4 + 0.5 * (0.04 - 0.4) * (1 + math.cos(math.pi * 4 / 5))  # set before step 5
    assert sorted({round(g["weight_decay"], 12) for g in groups}) == [0.0, round(last, 12)]

    cut = tmp_path / "cut"
    overrides = [*tiny_overrides(corpus, cut, steps=5), *decay]
    restore = ctrl_c_after(monkeypatch, 2)  # during step 3
    capsys.readouterr()
    began = time.perf_counter()
    assert cli.main(["train", run_file(cut), *overrides]) == 130
    assert time.perf_counter() - began < 30
    restore()
    out = capsys.readouterr()
    assert "stopped by Ctrl-C after step 3" in out.out and "train.resume=latest" in out.out
    assert "Traceback" not in out.err
    assert checkpoint.latest(cut / "checkpoints").name == "step_00000003"
    assert cli.main(["train", run_file(cut), *overrides, "train.resume=latest"]) == 0
    assert losses(cut) == whole  # bit-exact

    again = tmp_path / "again"
    ctrl_c_after(monkeypatch, 1, times=2)  # a second Ctrl-C: out at once, no checkpoint
    with pytest.raises(KeyboardInterrupt):
        cli.main(["train", run_file(again), *tiny_overrides(corpus, again, steps=5)])
    assert checkpoint.latest(again / "checkpoints") is None


def losses(run_dir) -> dict[int, float]:
    rows = read_jsonl(run_dir / "metrics.jsonl")
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}
