import math

import pytest
import torch
from torch import nn

from vlcontrast.config import OptimConfig
from vlcontrast.train.optim import (
    apply_settings,
    build_optimizer,
    build_scheduler,
    cosine_factor,
    set_weight_decay,
)


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.logit_scale = nn.Parameter(torch.tensor(2.0))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 4))  # timm's layout of OpenCLIP's (W,)
        self.pos_embed = nn.Parameter(torch.zeros(1, 3, 4))


def decayed_ids(optimizer) -> set[int]:
    return {id(p) for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}


def test_no_weight_decay_on_norms_biases_class_tokens_and_logit_scale():
    """OpenCLIP's rule (tests/test_openclip_parity.py checks the training steps agree)."""
    model = Toy()
    optimizer = build_optimizer(model, OptimConfig(weight_decay=0.3))
    assert decayed_ids(optimizer) == {id(model.linear.weight), id(model.pos_embed)}


def test_a_checkpoint_saved_with_the_class_token_decayed_resumes_with_its_groups():
    from vlcontrast.train.optim import keep_saved_groups

    model = Toy()
    named = list(model.named_parameters())  # the earlier rule: every dimension counted
    earlier = torch.optim.AdamW(
        [
            {"params": [p for n, p in named if p.ndim >= 2 and n != "logit_scale"]},
            {
                "params": [p for n, p in named if p.ndim < 2 or n == "logit_scale"],
                "weight_decay": 0,
            },
        ]
    )
    model.cls_token.sum().backward()
    earlier.step()
    saved = earlier.state_dict()
    optimizer = build_optimizer(model, OptimConfig(weight_decay=0.3))
    keep_saved_groups(optimizer, model, [len(g["params"]) for g in saved["param_groups"]])
    optimizer.load_state_dict(saved)
    assert id(model.cls_token) in decayed_ids(optimizer)
    assert torch.equal(
        optimizer.state[model.cls_token]["exp_avg"], earlier.state[model.cls_token]["exp_avg"]
    )


def dino_cosine(base: float, final: float, steps: int) -> list[float]:
    """DINO's utils.cosine_scheduler without warm-up, as main_dino.py builds its weight decay
    schedule (one value per iteration)."""
    return [
        final + 0.5 * (base - final) * (1 + math.cos(math.pi * i / steps)) for i in range(steps)
    ]


@pytest.mark.parametrize("layer_decay", [1.0, 0.5])
def test_weight_decay_follows_dinos_cosine_on_the_decayed_groups_only(layer_decay):
    model, steps = Toy(), 7
    cfg = OptimConfig(weight_decay=0.04, weight_decay_end=0.4, layer_decay=layer_decay)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, steps)
    plain = {id(p) for g in optimizer.param_groups if not g["decayed"] for p in g["params"]}
    for step, want in enumerate(dino_cosine(0.04, 0.4, steps)):
        set_weight_decay(optimizer, cfg, step, steps)
        for group in optimizer.param_groups:
            assert group["weight_decay"] == pytest.approx(want if group["decayed"] else 0.0)
        assert decayed_ids(optimizer).isdisjoint(plain)
        # a resume at this step (the checkpoint's constant weight decay restored first) decays
        # as the uninterrupted run
        apply_settings(optimizer, scheduler, cfg, step)
        set_weight_decay(optimizer, cfg, step, steps)
        assert [g["weight_decay"] for g in optimizer.param_groups] == [
            want if g["decayed"] else 0.0 for g in optimizer.param_groups
        ]
    # without an end, the weight decay stays as built
    constant = build_optimizer(model, OptimConfig(weight_decay=0.04))
    set_weight_decay(constant, OptimConfig(weight_decay=0.04), 3, steps)
    assert {g["weight_decay"] for g in constant.param_groups} == {0.04, 0.0}


def test_cosine_schedule_with_warmup():
    assert cosine_factor(0, 10, 110, 0.0) == pytest.approx(0.1)
    assert cosine_factor(9, 10, 110, 0.0) == pytest.approx(1.0)
    assert cosine_factor(60, 10, 110, 0.0) == pytest.approx(0.5)
    assert cosine_factor(110, 10, 110, 0.1) == pytest.approx(0.1)
    optimizer = build_optimizer(Toy(), OptimConfig(lr=1.0, warmup_steps=2))
    scheduler = build_scheduler(optimizer, OptimConfig(lr=1.0, warmup_steps=2), total_steps=6)
    lrs = []
    for _ in range(6):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    want = [0.5, 1.0] + [0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)]
    assert lrs == pytest.approx(want)


def test_lars_steps_follow_the_formula_and_leave_biases_unadapted():
    torch.manual_seed(0)
    layer = nn.Linear(4, 3).double()
    cfg = OptimConfig(name="lars", lr=0.5, weight_decay=0.1, momentum=0.9, trust_coefficient=0.01)
    optimizer = build_optimizer(layer, cfg)
    w0, b0 = layer.weight.detach().clone(), layer.bias.detach().clone()
    velocity_w = velocity_b = None
    for _ in range(2):
        optimizer.zero_grad()
        layer(torch.randn(5, 4, dtype=torch.float64)).pow(2).sum().backward()
        g_w, g_b = layer.weight.grad.clone(), layer.bias.grad.clone()
        u_w = g_w + 0.1 * w0  # weight decay, then the trust ratio eta ||w|| / ||u||
        u_w = u_w * (0.01 * w0.norm() / u_w.norm())
        u_b = g_b  # a bias: no decay, no adaptation
        velocity_w = u_w if velocity_w is None else 0.9 * velocity_w + u_w
        velocity_b = u_b if velocity_b is None else 0.9 * velocity_b + u_b
        optimizer.step()
        w0, b0 = w0 - 0.5 * velocity_w, b0 - 0.5 * velocity_b
        torch.testing.assert_close(layer.weight.detach(), w0, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(layer.bias.detach(), b0, rtol=1e-12, atol=1e-12)


def test_the_optimizer_is_chosen_by_name():
    layer = nn.Linear(4, 3)
    assert isinstance(build_optimizer(layer, OptimConfig()), torch.optim.AdamW)
    sgd = build_optimizer(layer, OptimConfig(name="sgd", momentum=0.8))
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["momentum"] == 0.8
    assert [g["weight_decay"] for g in sgd.param_groups] == [0.2, 0.0]
    assert type(build_optimizer(layer, OptimConfig(name="lars"))).__name__ == "LARS"
