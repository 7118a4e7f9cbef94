"""Defaults that learn: the tokenizer command, the vocabulary following it, unknown-token
warnings."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_file, tiny_overrides
from vlcontrast import cli
from vlcontrast.config import TextTowerConfig
from vlcontrast.data.vocab import unknown_rate
from vlcontrast.models.text_tower import load_tokenizer
from vlcontrast.train import checkpoint


@pytest.mark.parametrize("kind", ["bpe", "wordlevel"])
def test_the_tokenizer_command_trains_one_that_training_picks_up(corpus, tmp_path, capsys, kind):
    out = tmp_path / "tok"
    args = ["tokenizer", "train", "--shards", corpus["train_shards"], "--out", str(out)]
    assert cli.main([*args, "--vocab-size", "300", "--kind", kind, "--no-progress"]) == 0
    assert f"text.tokenizer={out}" in capsys.readouterr().out
    tok = load_tokenizer(TextTowerConfig(tokenizer=str(out)))
    assert len(tok) <= 300
    ids = tok("A LARGE Red Circle")["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True).strip() == "a large red circle"  # lower
    if kind == "bpe":  # byte fallback: a word never seen is split, not unknown
        assert tok.unk_token_id is None
        assert tok.decode(tok("zebra ñandú")["input_ids"], skip_special_tokens=True) == (
            "zebra ñandú"
        )
    # training with it: the inline text tower's vocab_size follows the tokenizer
    overrides = [o for o in tiny_overrides(corpus, tmp_path / "run", steps=1)]
    overrides = [o.replace("vocab_size: 64, ", "") for o in overrides]
    overrides = [
        o if not o.startswith("text.tokenizer=") else f"text.tokenizer={out}" for o in overrides
    ]
    assert cli.main(["train", run_file(tmp_path / "run"), *overrides]) == 0
    ckpt = checkpoint.latest(tmp_path / "run" / "checkpoints")
    saved = json.loads((ckpt / "config.json").read_text())
    assert saved["text"]["config"]["vocab_size"] == len(tok)


def test_an_out_of_vocabulary_template_warns_before_training(corpus, tmp_path, capsys):
    data = corpus["heldout_shards"]
    spec = f"[{{kind: zeroshot, data: '{data}', templates: ['zorgle blimp {{}} quux']}}]"
    overrides = [*tiny_overrides(corpus, tmp_path, steps=1), f"eval.evaluators={spec}"]
    assert cli.main(["train", run_file(tmp_path), *overrides]) == 0
    out = capsys.readouterr().out
    warning = next(line for line in out.splitlines() if "zero-shot prompt tokens" in line)
    assert warning.startswith("warning: ") and "'zorgle'" in warning
    assert out.index(warning) < out.index("step 1 ")  # before training, not after it


def test_unknown_rate_counts_unknown_tokens(corpus):
    tok = load_tokenizer(TextTowerConfig(tokenizer=corpus["tokenizer"]))  # word-level
    rate, words = unknown_rate(tok, ["a red circle", "a zorgle quux"])
    assert rate == pytest.approx(2 / 6) and set(words) == {"zorgle", "quux"}


def test_presets_match_openclip_shapes_and_yield_to_the_command_line(tmp_path):
    from vlcontrast import config as config_lib
    from vlcontrast.models import build_model

    cfg = config_lib.load(None, ["model.preset=b32", "text.config.vocab_size=49408"])
    model = build_model(cfg)
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    # OpenCLIP ViT-B-32: 87.85M vision, 63.43M text parameters (with their projections)
    assert count(model.image) == pytest.approx(87.85e6, rel=0.01)
    assert count(model.text) == pytest.approx(63.43e6, rel=0.01)
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  preset: tiny\n  embed_dim: 64\n")
    cfg = config_lib.load(path, ["image.image_size=48"])
    assert cfg.image.model_kwargs["depth"] == 4 and cfg.text.config["num_hidden_layers"] == 4
    assert cfg.model.embed_dim == 64 and cfg.image.image_size == 48  # the file, then the CLI
    with pytest.raises(config_lib.ConfigError, match="model.preset: expected one of"):
        config_lib.load(None, ["model.preset=b99"])


def test_config_keys_give_each_default_a_reason(capsys):
    assert cli.main(["config", "--keys"]) == 0
    lines = capsys.readouterr().out.splitlines()
    crop = next(line for line in lines if line.startswith("data.crop "))
    assert "default 'random_resized'" in crop and "OpenCLIP" in crop
    assert any(line.startswith("text.pooling (str, default 'eos'): ") for line in lines)
