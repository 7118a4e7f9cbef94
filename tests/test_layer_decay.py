"""Layer-wise lr decay (optim.layer_decay, train/layer_decay.py): each parameter's lr is the
BEiT rule written out here, the heads keep the full lr, 1 leaves the optimizer as it was, and
the scales survive a resume's settings."""

import pytest
import torch

from tests.conftest import tiny_vit_config
from vlcontrast.config import OptimConfig
from vlcontrast.models import build_model
from vlcontrast.train.optim import apply_settings, build_optimizer, build_scheduler


def expected_scale(name: str, decay: float, depth: dict[str, int]) -> float:
    """BEiT's rule by hand: embeddings layer 0, block i layer i + 1, the rest L + 1."""
    for tower, blocks_word in (("image.", ".blocks."), ("text.", ".layer.")):
        if not name.startswith(tower):
            continue
        n = depth[tower]
        if blocks_word in name:
            layer = int(name.split(blocks_word)[1].split(".")[0]) + 1
        elif any(
            k in name for k in ("patch_embed", "cls_token", "pos_embed", "norm_pre", "embeddings")
        ):
            # (timm's own ViT group_matcher counts norm_pre in the stem)
            layer = 0
        else:
            layer = n + 1
        return decay ** (n + 1 - layer)
    return 1.0  # logit_scale


@pytest.fixture
def model(corpus, tmp_path):
    cfg = tiny_vit_config(corpus, tmp_path)
    return build_model(cfg)


def lr_of(optimizer) -> dict[int, float]:
    return {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}


def test_each_parameter_gets_the_beit_scale_and_heads_the_full_lr(model):
    depth = {
        "image.": len(model.image.trunk.blocks),
        "text.": model.text.encoder.config.num_hidden_layers,
    }
    assert depth["image."] >= 1 and depth["text."] >= 1
    cfg = OptimConfig(lr=1e-3, layer_decay=0.5)
    lrs = lr_of(build_optimizer(model, cfg))
    for name, param in model.named_parameters():
        want = 1e-3 * expected_scale(name, 0.5, depth)
        assert lrs[id(param)] == pytest.approx(want), name
    assert lrs[id(model.logit_scale)] == pytest.approx(1e-3)
    assert lrs[id(model.image.proj.weight)] == pytest.approx(1e-3)
    # the lowest block of the image tower at decay^L, its patch embedding at decay^(L+1)
    assert lrs[id(model.image.trunk.patch_embed.proj.weight)] == pytest.approx(
        1e-3 * 0.5 ** (depth["image."] + 1)
    )


def test_off_is_the_two_groups_of_before(model):
    optimizer = build_optimizer(model, OptimConfig(lr=1e-3))
    assert [g["decayed"] for g in optimizer.param_groups] == [True, False]
    assert all(g["lr"] == 1e-3 and "lr_scale" not in g for g in optimizer.param_groups)


def test_the_schedule_and_a_resume_keep_each_groups_scale(model):
    cfg = OptimConfig(lr=1e-3, layer_decay=0.7, warmup_steps=2)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, total_steps=10)
    scales = [g["lr_scale"] for g in optimizer.param_groups]
    assert len(set(scales)) > 2
    for group in optimizer.param_groups:  # warm-up step 0: lr x scale x 1/2
        assert group["lr"] == pytest.approx(1e-3 * group["lr_scale"] * 0.5)
    state = optimizer.state_dict()
    fresh = build_optimizer(model, cfg)
    fresh.load_state_dict(state)
    apply_settings(fresh, build_scheduler(fresh, cfg, 10), OptimConfig(lr=2e-3, layer_decay=0.7), 5)
    factor = scheduler.lr_lambdas[0](5)
    for group, scale in zip(fresh.param_groups, scales, strict=True):
        assert group["lr"] == pytest.approx(2e-3 * scale * factor)
        assert group["weight_decay"] == (0.2 if group["decayed"] else 0.0)
    torch.testing.assert_close(
        torch.tensor([g["lr_scale"] for g in fresh.param_groups]), torch.tensor(scales)
    )
