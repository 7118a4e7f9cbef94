"""A run file fitted to the machine and the data (``train/fit.py``, ``config.load``): the
command line's length replaces the run file's, workers follow the cores and shards, precision
follows the hardware, a default warm-up stays within 10% of a short run, a batch larger than the
data and a bad key stop before anything is written."""

from __future__ import annotations

import pytest

from tests.conftest import run_file, tiny_overrides
from vlcontrast import cli
from vlcontrast import config as config_lib
from vlcontrast.config import ConfigError
from vlcontrast.train import fit
from vlcontrast.train.metrics_log import read_jsonl


def test_the_command_line_length_replaces_the_run_file_one(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  epochs: 32\n")
    cfg = config_lib.load(path, ["train.steps=50"])
    assert (cfg.train.steps, cfg.train.epochs) == (50, 0)
    assert "train.steps=50 on the command line replaces the run file's train.epochs=32" in (
        capsys.readouterr().err
    )
    path.write_text("train:\n  steps: 1000\n")
    cfg = config_lib.load(path, ["train.epochs=2.5"])
    assert (cfg.train.steps, cfg.train.epochs) == (0, 2.5)
    assert "train.epochs=2.5 on the command line" in capsys.readouterr().err
    cfg = config_lib.load(path, ["train.steps=7"])  # the same key: plainly replaced
    assert (cfg.train.steps, cfg.train.epochs) == (7, 0) and not capsys.readouterr().err


def test_workers_follow_the_cores_and_the_shards(monkeypatch, capsys):
    monkeypatch.setattr(fit, "cores_per_rank", lambda: 2)
    cfg = config_lib.load(None, ["data.num_workers=8"])
    fit.fit_workers(cfg, shards=100)
    assert cfg.data.num_workers == 2 and "lowered to 2, the CPU cores" in capsys.readouterr().out
    cfg = config_lib.load(None, ["data.num_workers=2"])
    fit.fit_workers(cfg, shards=1)
    assert cfg.data.num_workers == 1 and "shards per rank" in capsys.readouterr().out
    cfg = config_lib.load(None, ["data.num_workers=2", "data.streams=4"])
    fit.fit_workers(cfg, shards=1)  # streams fixed apart from the workers: only cores count
    assert cfg.data.num_workers == 2


@pytest.mark.parametrize(
    "cuda, cores, want",
    [(True, 16, 15), (True, 64, 16), (True, 1, 1), (False, 16, 2), (False, 1, 1)],
)
def test_the_default_worker_count_follows_the_cores_and_the_device(monkeypatch, cuda, cores, want):
    """-1 (the default): every core of the rank but the main process's with a GPU, at most 16;
    2 on a CPU; never more than the cores."""
    monkeypatch.setattr(fit, "cores_per_rank", lambda: cores)
    monkeypatch.setattr(fit.torch.cuda, "is_available", lambda: cuda)
    cfg = config_lib.load(None, [])
    assert cfg.data.num_workers == -1
    fit.fit_workers(cfg, shards=1000)
    assert cfg.data.num_workers == want


def test_precision_auto_is_fp32_on_a_cpu_and_bf16_warns_without_bf16_units(monkeypatch, capsys):
    cfg = config_lib.load(None, [])
    assert cfg.train.precision == "auto"
    fit.fit_precision(cfg, "cpu")
    assert cfg.train.precision == "no" and "auto -> fp32 (CPU)" in capsys.readouterr().out
    monkeypatch.setattr(fit, "cpu_has_native_bf16", lambda: False)
    cfg = config_lib.load(None, ["train.precision=bf16"])
    fit.fit_precision(cfg, "cpu")
    assert cfg.train.precision == "bf16" and "about 10x slower" in capsys.readouterr().out


def test_a_default_warmup_stays_within_a_tenth_of_a_short_run(capsys):
    cfg = config_lib.load(None, ["train.steps=337"])
    fit.fit_warmup(cfg)
    assert cfg.optim.warmup_steps == 33 and "warming up for 33" in capsys.readouterr().out
    cfg = config_lib.load(None, ["train.steps=100000"])
    fit.fit_warmup(cfg)
    assert cfg.optim.warmup_steps == 500
    cfg = config_lib.load(None, ["train.steps=337", "optim.warmup_steps=300"])
    fit.fit_warmup(cfg)  # set by the user: kept
    assert cfg.optim.warmup_steps == 300


def test_a_short_run_decays_its_learning_rate(corpus, tmp_path):
    overrides = [o for o in tiny_overrides(corpus, tmp_path, steps=10) if "warmup" not in o]
    assert cli.main(["train", run_file(tmp_path), *overrides]) == 0
    lrs = [r["train/lr"] for r in read_jsonl(tmp_path / "metrics.jsonl") if "train/lr" in r]
    assert max(lrs) == pytest.approx(5e-4) and lrs[-1] == 0.0  # warmed up in 1 step, decayed


def test_a_batch_larger_than_the_data_stops_before_anything_is_written(corpus, tmp_path, capsys):
    out = tmp_path / "new" / "run"
    overrides = [*tiny_overrides(corpus, out), "data.batch_size=300"]  # 256 samples
    assert cli.main(["train", run_file(tmp_path), *overrides]) == 2
    err = capsys.readouterr().err
    assert "holds 256 samples, fewer than one global batch of 300" in err
    assert "data.batch_size=256 or less" in err and err.count("\n") == 1
    assert not (tmp_path / "new").exists()
    with pytest.raises(ConfigError):
        config_lib.load(None, ["optim.warmup_steps=-2"])
