import math

import pytest
import torch
from torch import nn

from vlcontrast.config import OptimConfig
from vlcontrast.train.optim import build_optimizer, build_scheduler, cosine_factor


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.logit_scale = nn.Parameter(torch.tensor(2.0))


def test_no_weight_decay_on_norms_biases_and_logit_scale():
    model = Toy()
    optimizer = build_optimizer(model, OptimConfig(weight_decay=0.3))
    decayed = {id(p) for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(model.linear.weight)}
    others = [model.linear.bias, model.norm.weight, model.norm.bias, model.logit_scale]
    assert all(id(p) not in decayed for p in others)


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
