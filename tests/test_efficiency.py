"""Efficiency switches leave the numbers alone where they should: gradient checkpointing on both
towers gives the same loss and gradients, patch dropout 0 is the plain tower and patch dropout
> 0 changes training but not evaluation, channels-last gives the same embeddings; and an image
tower loads timm weights from a local file."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import tiny_vit_config
from vlcontrast import config as config_lib
from vlcontrast.models import build_model
from vlcontrast.objectives import build_objective
from vlcontrast.objectives.base import step_loss
from vlcontrast.train.model_setup import efficiency_switches


def cfg_for(corpus, tmp_path, *extra):
    return tiny_vit_config(corpus, tmp_path, *extra)


def batch(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {
        "images": torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=gen),
        "input_ids": torch.randint(5, 60, (6, 10), generator=gen),
        "attention_mask": torch.ones(6, 10, dtype=torch.long),
    }


def loss_and_grads(model, cfg):
    model.train()
    torch.manual_seed(1)  # the same dropout masks
    task = build_objective(cfg.objective)
    task.setup(model, cfg, 6)
    loss = step_loss(task, batch())["loss"]
    loss.backward()
    return loss.detach(), {
        n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None
    }


def test_gradient_checkpointing_leaves_the_loss_and_gradients_unchanged(corpus, tmp_path):
    cfg = cfg_for(corpus, tmp_path)
    torch.manual_seed(0)
    plain = build_model(cfg)
    checkpointed = build_model(cfg)
    checkpointed.load_state_dict(plain.state_dict())
    cfg.train.grad_checkpointing = True
    efficiency_switches(checkpointed, cfg)
    assert checkpointed.image.trunk.grad_checkpointing
    encoder = checkpointed.text.encoder
    assert (
        getattr(encoder, "is_activation_checkpointing", None) or encoder.is_gradient_checkpointing
    )
    want_loss, want = loss_and_grads(plain, cfg)
    got_loss, got = loss_and_grads(checkpointed, cfg)
    torch.testing.assert_close(got_loss, want_loss, rtol=1e-6, atol=1e-6)
    for name, grad in want.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-5, atol=1e-6, msg=name)


def test_patch_dropout_zero_is_the_plain_tower_and_positive_only_drops_in_training(
    corpus, tmp_path
):
    torch.manual_seed(0)
    plain = build_model(cfg_for(corpus, tmp_path)).eval()
    torch.manual_seed(0)
    zero = build_model(cfg_for(corpus, tmp_path, "image.patch_dropout=0")).eval()
    half_cfg = cfg_for(corpus, tmp_path, "image.patch_dropout=0.5")
    half = build_model(half_cfg)
    half.load_state_dict(plain.state_dict())
    images = batch()["images"]
    with torch.no_grad():
        want = plain.encode_image(images)
        torch.testing.assert_close(zero.encode_image(images), want)
        torch.testing.assert_close(half.eval().encode_image(images), want)  # eval: every patch
        assert not torch.allclose(half.train().encode_image(images), want, atol=1e-4)
    with pytest.raises(config_lib.ConfigError, match="image.patch_dropout"):
        build_model(
            cfg_for(
                corpus,
                tmp_path,
                "image.model=test_resnet",
                "image.model_kwargs={}",
                "image.patch_dropout=0.5",
            )
        )


def test_channels_last_gives_the_same_embeddings(corpus, tmp_path):
    cfg = cfg_for(corpus, tmp_path, "image.model=test_resnet", "image.model_kwargs={}")
    torch.manual_seed(0)
    plain = build_model(cfg).eval()
    nhwc = build_model(cfg).eval()
    nhwc.load_state_dict(plain.state_dict())
    cfg.train.channels_last = True
    efficiency_switches(nhwc, cfg)
    images = batch()["images"]
    with torch.no_grad():
        torch.testing.assert_close(
            nhwc.encode_image(images), plain.encode_image(images), rtol=1e-5, atol=1e-5
        )


def test_an_image_tower_loads_timm_weights_from_a_local_file(corpus, tmp_path):
    from safetensors.torch import save_file

    cfg = cfg_for(corpus, tmp_path)
    torch.manual_seed(3)
    source = build_model(cfg)
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in source.image.trunk.state_dict().items()}, str(path))
    torch.manual_seed(4)
    loaded = build_model(cfg_for(corpus, tmp_path, f"image.checkpoint_path={path}"))
    for name, value in source.image.trunk.state_dict().items():
        assert torch.equal(loaded.image.trunk.state_dict()[name], value), name
    with pytest.raises(config_lib.ConfigError, match="image.checkpoint_path: no file"):
        build_model(cfg_for(corpus, tmp_path, f"image.checkpoint_path={tmp_path}/none.pth"))
