"""Locked towers (LiT): which parameters train, eval mode kept through ``train()``, and locked
weights bit-identical after steps under 2-process DDP without "unused parameters" errors."""

from __future__ import annotations

import pytest
import torch

from tests import distributed_lock_case as case
from tests.conftest import spawn_gloo, tiny_vit_config
from vlcontrast import config as config_lib
from vlcontrast.models import build_model
from vlcontrast.schema import ConfigError
from vlcontrast.train.locking import apply_locks


def cfg_for(corpus, tmp_path, *extra):
    return tiny_vit_config(corpus, tmp_path, *extra, depth=3)


def trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_a_fully_locked_image_tower_is_frozen_and_stays_in_eval_mode(corpus, tmp_path):
    cfg = cfg_for(corpus, tmp_path, "lock.image=true")
    model = build_model(cfg)
    apply_locks(model, cfg.lock)
    assert not any(n.startswith("image.") for n in trainable(model))
    assert any(n.startswith("text.") for n in trainable(model)) and "logit_scale" in trainable(
        model
    )
    model.train()
    assert not model.image.training and model.text.training
    cfg = cfg_for(corpus, tmp_path, "lock.image=true", "lock.projections_trainable=true")
    model = build_model(cfg)
    apply_locks(model, cfg.lock)
    assert {n for n in trainable(model) if n.startswith("image.")} == {"image.proj.weight"}


def test_all_but_the_last_blocks_and_trainable_norms(corpus, tmp_path):
    cfg = cfg_for(
        corpus,
        tmp_path,
        "lock.image=true",
        "lock.image_unlocked=1",
        "lock.text=true",
        "lock.text_unlocked=1",
        "lock.norms_trainable=true",
    )
    model = build_model(cfg)
    apply_locks(model, cfg.lock)
    names = trainable(model)
    assert any(n.startswith("image.trunk.blocks.2.") for n in names)
    assert "image.trunk.norm.weight" in names and "image.proj.weight" in names
    assert "image.trunk.blocks.0.attn.qkv.weight" not in names
    assert "image.trunk.blocks.0.norm1.weight" in names  # a norm of a locked block
    assert "image.trunk.patch_embed.proj.weight" not in names
    text_layers = {
        n.split(".")[4]
        for n in names
        if n.startswith("text.encoder.encoder.layer.") and "LayerNorm" not in n
    }
    assert text_layers == {"0"}  # the corpus BERT has one layer: it is the last, unlocked
    with pytest.raises(ConfigError, match="lock.image_unlocked: 5 blocks, but the tower has 3"):
        bad = cfg_for(corpus, tmp_path, "lock.image=true", "lock.image_unlocked=5")
        apply_locks(build_model(bad), bad.lock)


@pytest.mark.slow  # multi-process end to end: the README's command runs it
def test_locked_weights_stay_bit_identical_under_two_process_ddp(corpus, tmp_path):
    cfg = cfg_for(corpus, tmp_path, "lock.image=true", "optim.lr=1e-2")
    cfg_path = tmp_path / "cfg.json"
    config_lib.save(cfg, cfg_path)
    out = tmp_path / "out.pt"
    spawn_gloo(case.worker, 2, tmp_path, str(cfg_path), str(out))
    got = torch.load(out)
    for name, before in got["before"].items():
        same = torch.equal(before, got["after"][name])
        if name.startswith("image."):
            assert same, f"locked {name} changed"
    changed = [
        n
        for n in got["before"]
        if n.startswith("text.") and not torch.equal(got["before"][n], got["after"][n])
    ]
    assert changed, "the unlocked text tower did not train"
    assert got["modes"]["image"] is False and got["modes"]["text"] is True
