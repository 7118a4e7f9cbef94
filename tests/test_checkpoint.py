"""Atomic checkpoints: a save killed half-way never replaces the last good checkpoint."""

import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from vlcontrast.config import Config
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
    assert checkpoint.load_config(checkpoint.latest(tmp_path)) == Config()


def test_process_killed_mid_save_leaves_the_last_good_checkpoint(tmp_path):
    save_toy(tmp_path, 2, 2.0)
    script = textwrap.dedent(
        f"""
        import os, torch
        from torch import nn
        from vlcontrast.config import Config
        from vlcontrast.train import checkpoint

        real_save = torch.save
        def dying_save(obj, path, *args, **kwargs):
            with open(path, "wb") as handle:
                handle.write(b"half a file")
            os._exit(137)  # like SIGKILL: no cleanup, no finally blocks
        torch.save = dying_save
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
    assert torch.all(model.weight == 2.0) and checkpoint.load_train_state(last)["step"] == 2
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
