"""Checkpoints: atomic (a save killed half-way never replaces the last good one), named parts
round-trip exactly, and loading never runs code from the checkpoint."""

import json
import pickle
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from vlcontrast import config as config_lib
from vlcontrast.config import Config, ConfigError
from vlcontrast.models.load import read_config
from vlcontrast.train import checkpoint


def save_toy(root, step, value):
    model = nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.fill_(value)
    return checkpoint.save(root, step, model, {"step": step}, Config(), keep=2)


def test_save_keeps_the_newest_and_roundtrips(tmp_path):
    for step in (1, 2, 3):
        save_toy(tmp_path, step, float(step))
    assert [p.name for p in checkpoint.all_checkpoints(tmp_path)] == [
        "step_00000002",
        "step_00000003",
    ]
    model = nn.Linear(3, 2)
    checkpoint.load_weights(checkpoint.latest(tmp_path), model)
    assert torch.all(model.weight == 3.0)
    assert read_config(checkpoint.latest(tmp_path)) == config_lib.resolve(Config())


def test_process_killed_mid_save_leaves_the_last_good_checkpoint(tmp_path):
    save_toy(tmp_path, 2, 2.0)
    script = textwrap.dedent(
        f"""
        import os, torch
        from torch import nn
        from vlcontrast.config import Config
        from vlcontrast.train import checkpoint

        def dying_save(tensors, path, *args, **kwargs):
            with open(path, "wb") as handle:
                handle.write(b"half a file")
            os._exit(137)  # like SIGKILL: no cleanup, no finally blocks
        checkpoint.save_file = dying_save
        checkpoint.save({str(tmp_path)!r}, 4, nn.Linear(3, 2), {{"step": 4}}, Config())
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert result.returncode == 137, result.stderr.decode()
    assert any(p.name.startswith(".tmp-") for p in tmp_path.iterdir())  # the partial write
    last = checkpoint.latest(tmp_path)
    assert last.name == "step_00000002"
    model = nn.Linear(3, 2)
    checkpoint.load_weights(last, model)
    assert torch.all(model.weight == 2.0) and checkpoint.load_state(last)["step"] == 2
    save_toy(tmp_path, 6, 6.0)  # the next save cleans the leftovers up
    assert not any(p.name.startswith(".tmp-") for p in tmp_path.iterdir())


def test_resaving_a_step_replaces_it_atomically(tmp_path):
    save_toy(tmp_path, 2, 2.0)
    save_toy(tmp_path, 2, 5.0)
    model = nn.Linear(3, 2)
    checkpoint.load_weights(checkpoint.latest(tmp_path), model)
    assert torch.all(model.weight == 5.0)


def test_weights_from_before_the_pooler_was_dropped_still_load(tmp_path):
    """Old checkpoints hold the (unused) BERT pooler; it is ignored, anything else is refused."""
    from safetensors.torch import save_file

    model = nn.Linear(2, 2)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    weights["text.encoder.pooler.dense.weight"] = torch.zeros(2, 2)
    save_file(weights, tmp_path / "model.safetensors")
    fresh = nn.Linear(2, 2)
    checkpoint.load_weights(tmp_path, fresh)
    torch.testing.assert_close(fresh.weight, model.weight)
    weights["image.extra"] = torch.zeros(1)
    save_file(weights, tmp_path / "model.safetensors")
    with pytest.raises(RuntimeError, match="unexpected \\['image.extra'\\]"):
        checkpoint.load_weights(tmp_path, nn.Linear(2, 2))


def test_named_parts_round_trip_exactly(tmp_path):
    """Optimizer state (int keys), tuples, numpy arrays, nested tensors: what goes in comes back
    with the same types and values."""
    model = nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    random.seed(3)
    np.random.seed(4)
    parts = {
        "optimizer": optimizer.state_dict(),
        "rng": checkpoint.RNGState().state_dict(),
        "misc": {"t": (1, 2.5, "x"), "a": np.arange(3, dtype=np.uint32), 7: [torch.ones(2)]},
    }
    want = (random.random(), np.random.rand(), torch.rand(1))
    path = checkpoint.save(tmp_path, 1, model, parts, Config())
    assert not list(path.glob("*.pt")) and (path / "state.json").is_file()
    loaded = checkpoint.load_state(path)["parts"]
    fresh = torch.optim.AdamW(nn.Linear(3, 2).parameters(), lr=1e-3)
    fresh.load_state_dict(loaded["optimizer"])
    for key, value in optimizer.state_dict()["state"][0].items():
        torch.testing.assert_close(fresh.state_dict()["state"][0][key], value)
    assert loaded["misc"]["t"] == (1, 2.5, "x") and loaded["misc"]["a"].dtype == np.uint32
    torch.testing.assert_close(loaded["misc"][7][0], torch.ones(2))
    checkpoint.RNGState().load_state_dict(loaded["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1)) == want


class Payload:
    """Unpickling this writes a marker file: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_planted_pickle_is_refused_and_never_runs(tmp_path):
    """An old-format ``train_state.pt`` whose pickle would run code is refused on resume."""
    save_toy(tmp_path, 2, 2.0)
    ckpt = checkpoint.latest(tmp_path)
    for name in ("state.json", "state.safetensors"):
        (ckpt / name).unlink()
    marker = tmp_path / "pwned"
    with open(ckpt / "train_state.pt", "wb") as handle:
        pickle.dump({"step": 2, "rng": Payload(str(marker))}, handle)
    with pytest.raises(ConfigError, match="refusing to load .*train_state.pt"):
        checkpoint.load_state(ckpt)
    assert not marker.exists()


def test_old_format_train_state_still_loads(tmp_path):
    """``train_state.pt`` as earlier versions wrote it (numpy RNG state inside) still resumes."""
    save_toy(tmp_path, 2, 2.0)
    ckpt = checkpoint.latest(tmp_path)
    model = nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    rng = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": [],
    }
    old = {"step": 2, "optimizer": optimizer.state_dict(), "scheduler": {}, "rng": rng}
    old["position"] = {"epoch": 1}
    torch.save(old, ckpt / "train_state.pt")
    for name in ("state.json", "state.safetensors"):
        (ckpt / name).unlink()
    saved = checkpoint.load_state(ckpt)
    assert saved["step"] == 2 and saved["parts"]["data"] == {"epoch": 1}
    checkpoint.RNGState().load_state_dict(saved["parts"]["rng"])


def test_a_damaged_state_file_is_one_clear_message(tmp_path):
    save_toy(tmp_path, 2, 2.0)
    ckpt = checkpoint.latest(tmp_path)
    (ckpt / "state.json").write_text("{not json")
    with pytest.raises(ConfigError, match="this checkpoint is damaged"):
        checkpoint.load_state(ckpt)
    json.loads((ckpt / "config.json").read_text())  # the rest is untouched
