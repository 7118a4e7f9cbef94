"""WiSE-FT weight interpolation (models/interpolate.py, ``vlcontrast weights interpolate``):
alpha 0 and 1 give the two checkpoints exactly, 0.5 their mean, a different architecture one
message naming the first tensor that differs."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from tests.conftest import run_file, tiny_overrides
from vlcontrast import cli
from vlcontrast.train import checkpoint


def test_interpolation_is_exact_at_the_ends_and_the_mean_between(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", run_file(run), *tiny_overrides(corpus, run, steps=4)]) == 0
    a, b = checkpoint.all_checkpoints(run / "checkpoints")[-2:]  # steps 2 and 4
    weights = {}
    for alpha in (0.0, 0.5, 1.0):
        out = tmp_path / f"mix{alpha}"
        args = ["weights", "interpolate", str(a), str(b), "--alpha", str(alpha), "--out", str(out)]
        assert cli.main(args) == 0
        weights[alpha] = load_file(out / "model.safetensors")
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert any(not torch.equal(wa[k], wb[k]) for k in wa)  # two different models
    for key in wa:
        assert torch.equal(weights[0.0][key], wa[key]) and torch.equal(weights[1.0][key], wb[key])
        if wa[key].is_floating_point():
            want = ((wa[key].double() + wb[key].double()) / 2).to(wa[key].dtype)
            assert torch.equal(weights[0.5][key], want), key
    # the result is a checkpoint: evaluation reads it
    assert (
        cli.main(
            [
                "eval",
                "zeroshot",
                "--checkpoint",
                str(tmp_path / "mix0.5"),
                "--data",
                corpus["heldout_shards"],
                "--workers",
                "0",
            ]
        )
        == 0
    )

    other = tmp_path / "other"
    wider = [*tiny_overrides(corpus, other, steps=2), "model.embed_dim=24"]
    assert cli.main(["train", run_file(other), *wider]) == 0
    c = checkpoint.latest(other / "checkpoints")
    args = [
        "weights",
        "interpolate",
        str(a),
        str(c),
        "--alpha",
        "0.5",
        "--out",
        str(tmp_path / "x"),
    ]
    assert cli.main(args) == 2
    assert "shape" in capsys.readouterr().err and not (tmp_path / "x").exists()
    bad = ["weights", "interpolate", str(a), str(b), "--alpha", "1.5", "--out", str(tmp_path / "y")]
    assert cli.main(bad) == 2
