"""The run directory and resume through the CLI: changed settings applied from the saved step,
each step logged once after restarts, older checkpoints retiring newer timelines, folders of
other runs refused, unwritable folders and full disks as one message."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.conftest import crash_after, run_file, tiny_overrides
from vlcontrast import cli
from vlcontrast.train import checkpoint
from vlcontrast.train.metrics_log import read_jsonl
from vlcontrast.train.optim import cosine_factor


def train_rows(run_dir) -> list[dict]:
    return [r for r in read_jsonl(run_dir / "metrics.jsonl") if "train/loss" in r]


def test_resume_applies_a_changed_lr_and_logs_each_step_once(corpus, tmp_path, monkeypatch, capsys):
    overrides = tiny_overrides(corpus, tmp_path, steps=4)
    restore = crash_after(monkeypatch, 3)  # steps 1-3 logged, checkpoint at step 2
    with pytest.raises(KeyboardInterrupt):
        cli.main(["train", run_file(tmp_path), *overrides])
    restore()
    with open(tmp_path / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 3, "train/lo')  # a line torn by the crash
    capsys.readouterr()
    resumed = [*overrides, "train.resume=latest", "optim.lr=1e-5"]
    assert cli.main(["train", run_file(tmp_path), *resumed]) == 0
    assert "optim.lr 0.0005 -> 1e-05" in capsys.readouterr().out
    rows = train_rows(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # the re-run step 3 is logged once
    for row in rows[2:]:
        want = 1e-5 * cosine_factor(row["step"], 2, 4, 0.0)
        assert row["train/lr"] == pytest.approx(want, rel=1e-6), row["step"]


def test_a_restart_killed_before_its_first_checkpoint_logs_each_step_once(
    corpus, tmp_path, monkeypatch
):
    overrides = [*tiny_overrides(corpus, tmp_path, steps=4), "train.save_every=10"]
    restore = crash_after(monkeypatch, 3)  # steps 1-3 logged, no checkpoint yet
    with pytest.raises(KeyboardInterrupt):
        cli.main(["train", run_file(tmp_path), *overrides])
    restore()
    assert [r["step"] for r in train_rows(tmp_path)] == [1, 2, 3]
    assert cli.main(["train", run_file(tmp_path), *overrides, "train.resume=latest"]) == 0
    assert [r["step"] for r in train_rows(tmp_path)] == [1, 2, 3, 4]  # not 1, 2, 3, 1, ...


def test_resuming_an_older_checkpoint_retires_the_newer_timeline(corpus, tmp_path, monkeypatch):
    overrides = tiny_overrides(corpus, tmp_path, steps=6)
    assert cli.main(["train", run_file(tmp_path), *overrides]) == 0  # checkpoints 4 and 6 kept
    older = tmp_path / "checkpoints" / "step_00000004"
    restore = crash_after(monkeypatch, 1)  # resumes at 4, dies in step 5 before any save
    with pytest.raises(KeyboardInterrupt):
        cli.main(["train", run_file(tmp_path), *overrides, f"train.resume={older}"])
    restore()
    assert checkpoint.latest(tmp_path / "checkpoints") == older  # step 6 is no longer "latest"
    (retired,) = (tmp_path / "checkpoints" / "retired").iterdir()
    assert retired.name.startswith("step_00000006-") and (retired / "model.safetensors").is_file()
    assert cli.main(["train", run_file(tmp_path), *overrides, "train.resume=latest"]) == 0
    assert [r["step"] for r in train_rows(tmp_path)] == [1, 2, 3, 4, 5, 6]


def test_a_fresh_run_refuses_a_folder_with_another_run(corpus, tmp_path, capsys):
    overrides = tiny_overrides(corpus, tmp_path, steps=2)
    assert cli.main(["train", run_file(tmp_path), *overrides]) == 0
    capsys.readouterr()
    assert cli.main(["train", run_file(tmp_path), *overrides]) == 2
    err = capsys.readouterr().err
    assert "train.output_dir" in err and "train.overwrite=true" in err and err.count("\n") == 1
    assert cli.main(["train", run_file(tmp_path), *overrides, "train.overwrite=true"]) == 0
    (aside,) = tmp_path.glob("previous-*")
    assert (aside / "metrics.jsonl").is_file() and (aside / "step_00000002").is_dir()
    assert [r["step"] for r in train_rows(tmp_path)] == [1, 2]


@pytest.mark.parametrize("kind", ["file", "read-only"])
def test_an_unwritable_output_dir_is_one_message(corpus, tmp_path, capsys, kind):
    target = tmp_path / "out"
    if kind == "file":
        target.write_text("not a directory")
    else:
        target.mkdir()
        target.chmod(0o500)
        if os.access(target, os.W_OK):  # root ignores permissions: use a read-only mount
            if subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(target)]
            ).returncode:
                pytest.skip("cannot make a read-only directory here")
    try:
        overrides = [*tiny_overrides(corpus, target, steps=1)]
        assert cli.main(["train", run_file(tmp_path), *overrides]) == 2
        assert "train.output_dir" in capsys.readouterr().err
    finally:
        if kind == "read-only":
            subprocess.run(["umount", str(target)], capture_output=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_a_full_disk_while_saving_is_one_message_and_leaves_the_last_checkpoint(
    corpus, tmp_path, capsys
):
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(ckpts)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        overrides = tiny_overrides(corpus, tmp_path, steps=4)  # checkpoints of ~420 KB
        assert cli.main(["train", run_file(tmp_path), *overrides]) == 5
        err = capsys.readouterr().err
        assert "no space left on device while writing checkpoint step 4" in err
        assert "needs about" in err and err.count("\n") == 1
        assert [p.name for p in ckpts.iterdir()] == ["step_00000002"]  # no .tmp-* left
        assert checkpoint.load_state(ckpts / "step_00000002")["step"] == 2
    finally:
        subprocess.run(["umount", str(ckpts)], capture_output=True)
