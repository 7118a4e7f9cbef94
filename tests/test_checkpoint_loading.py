"""Loading a checkpoint someone gives you: damaged files named, a missing tokenizer warned about,
a planted pickle refused without running, and nothing read that the checkpoint does not hold."""

from __future__ import annotations

import json
import pickle
import shutil

import pytest

from tests.conftest import run_file
from tests.test_checkpoint import Payload
from vlcontrast import cli
from vlcontrast.models.load import load_model
from vlcontrast.schema import ConfigError


@pytest.mark.parametrize(
    "damaged", ["config.json", "model.safetensors", "tokenizer/tokenizer.json", "state.json"]
)
def test_a_damaged_checkpoint_file_is_named(saved_checkpoint, corpus, tmp_path, capsys, damaged):
    ckpt, overrides = saved_checkpoint
    (ckpt / damaged).write_bytes(b"\x00garbage{")
    capsys.readouterr()
    if damaged == "state.json":  # only resuming reads the training state
        args = ["train", run_file(tmp_path / "run"), *overrides, f"train.resume={ckpt}"]
    else:
        args = ["eval", "zeroshot", "--checkpoint", str(ckpt), "--data", corpus["heldout_shards"]]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "this checkpoint is damaged" in err and err.count("\n") == 1, err


def test_a_checkpoint_without_its_tokenizer_warns(saved_checkpoint, corpus, capsys):
    ckpt, _ = saved_checkpoint
    shutil.rmtree(ckpt / "tokenizer")
    (ckpt / "manifest.json").unlink()  # as versions before manifests wrote it
    args = ["eval", "zeroshot", "--checkpoint", str(ckpt), "--data", corpus["heldout_shards"]]
    assert cli.main([*args, "--workers", "0"]) == 0
    assert (
        "has no tokenizer/; using the tokenizer recorded at training time"
        in capsys.readouterr().err
    )


def test_resuming_a_planted_pickle_refuses_and_runs_nothing(saved_checkpoint, tmp_path, capsys):
    """The old checkpoint format through the real resume path: the payload never runs."""
    ckpt, overrides = saved_checkpoint
    (ckpt / "state.json").unlink()
    (ckpt / "state.safetensors").unlink()
    marker = tmp_path / "pwned"
    with open(ckpt / "train_state.pt", "wb") as handle:
        pickle.dump({"step": 2, "rng": Payload(str(marker))}, handle)
    args = ["train", run_file(tmp_path / "run"), *overrides, "train.resume=latest"]
    assert cli.main(args) == 2
    assert "refusing to load" in capsys.readouterr().err
    assert not marker.exists()


def test_a_checkpoint_loads_only_what_it_contains(saved_checkpoint, corpus, monkeypatch, capsys):
    """A config.json naming hub models never triggers a download: the text tower comes from
    the checkpoint's text_config.json, a hub image model is refused without --allow-download."""
    ckpt, _ = saved_checkpoint
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    values = json.loads((ckpt / "config.json").read_text())
    values["text"].update(model="some-org/some-text-model", config={}, pretrained=True)
    (ckpt / "config.json").write_text(json.dumps(values))
    model, tokenizer, cfg = load_model(ckpt)  # no network: rebuilt from text_config.json
    assert cfg.text.model == "" and cfg.text.config["model_type"] == "bert"
    values["image"]["model"] = "hf-hub:some-org/some-image-model"
    (ckpt / "config.json").write_text(json.dumps(values))
    args = ["eval", "zeroshot", "--checkpoint", str(ckpt), "--data", corpus["heldout_shards"]]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "image.model is the hub model 'hf-hub:some-org/some-image-model'" in err
    assert "--allow-download" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "planted",
    [
        {"checkpoint_path": "PTH"},  # timm reads the file itself after building
        {"pretrained_cfg_overlay": {"file": "PTH"}},  # ... or as its pretrained weights
    ],
)
def test_a_saved_config_cannot_make_timm_read_a_file(
    saved_checkpoint, tmp_path, monkeypatch, planted
):
    """timm's own loading arguments in ``image.model_kwargs`` would read a file the config
    names (past ``image.checkpoint_path``'s checks): refused, before the file is opened."""
    import torch

    ckpt, _ = saved_checkpoint
    pth = tmp_path / "named.pth"
    torch.save({}, pth)
    values = json.loads((ckpt / "config.json").read_text())
    text = json.dumps(planted).replace("PTH", str(pth))
    values["image"]["model_kwargs"] = {**values["image"]["model_kwargs"], **json.loads(text)}
    (ckpt / "config.json").write_text(json.dumps(values))
    opened = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: opened.append(a) or real_load(*a, **k))
    with pytest.raises(ConfigError, match=f"image.model_kwargs.{next(iter(planted))}: timm"):
        load_model(ckpt)
    assert not opened


def test_a_checkpoint_without_a_tokenizer_does_not_fetch_the_one_it_names(
    saved_checkpoint, corpus, monkeypatch, capsys
):
    ckpt, _ = saved_checkpoint
    shutil.rmtree(ckpt / "tokenizer")
    values = json.loads((ckpt / "config.json").read_text())
    values["text"]["tokenizer"] = "some-org/some-tokenizer"
    (ckpt / "config.json").write_text(json.dumps(values))
    fetched = []
    monkeypatch.setattr(
        "transformers.AutoTokenizer.from_pretrained", lambda name, *a, **k: fetched.append(name)
    )
    args = ["eval", "zeroshot", "--checkpoint", str(ckpt), "--data", corpus["heldout_shards"]]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert "the tokenizer it recorded, 'some-org/some-tokenizer'" in err
    assert "--allow-download" in err and not fetched
