"""The optimizer (``optim.name``: AdamW, SGD with momentum, or LARS) with CLIP's parameter
groups, and a linear-warmup cosine schedule.

No weight decay on gains, biases, class tokens and ``logit_scale`` (every parameter with fewer
than two dimensions of size above one), as in CLIP and OpenCLIP: decaying a temperature or a
LayerNorm gain towards zero has no regularising meaning. timm stores a ViT's class token as
(1, 1, W) where OpenCLIP stores (W,); counting only dimensions above one keeps it out of weight
decay as OpenCLIP does (with it decayed, the losses of ``tests/test_openclip_parity.py`` drifted
from OpenCLIP's by 1e-4 within 20 steps; without, they agree to 5e-7). LARS also leaves that
group out of its trust-ratio adaptation
(SimCLR, BYOL, Barlow Twins).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vlcontrast.config import OptimConfig
from vlcontrast.train.lars import LARS
from vlcontrast.train.layer_decay import lr_scales


def decays(name: str, param: torch.Tensor) -> bool:
    wide = sum(size > 1 for size in param.shape) >= 2  # the global shape, also of a DTensor
    return wide and "logit_scale" not in name


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float = 1.0) -> list[dict]:
    """Decayed, then not decayed (``decayed`` marks which); with ``layer_decay`` < 1 such a pair
    per lr scale (``train/layer_decay.py``), each group carrying its ``lr_scale``."""
    scales = lr_scales(model, layer_decay)
    by_key: dict[tuple[float, bool], list] = {(1.0, True): [], (1.0, False): []}
    for name, param in model.named_parameters():
        if param.requires_grad:
            by_key.setdefault((scales[name], decays(name, param)), []).append(param)
    groups = []
    for (scale, decayed), params in sorted(
        by_key.items(), key=lambda kv: (-kv[0][0], not kv[0][1])
    ):
        if not params and scale != 1.0:
            continue
        group = {"params": params, "weight_decay": weight_decay if decayed else 0.0}
        group["decayed"] = decayed
        if not decayed:
            group["lars_adapt"] = False
        if layer_decay != 1.0:
            group["lr_scale"] = scale
        groups.append(group)
    return groups


def keep_saved_groups(optimizer: torch.optim.Optimizer, model: nn.Module, sizes: list[int]):
    """A checkpoint written while weight decay counted every dimension (a (1, 1, W) class
    token was decayed) resumes with the groups it was saved with, so its run goes on as it was."""
    if sizes == [len(group["params"]) for group in optimizer.param_groups]:
        return
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    earlier = [p.ndim >= 2 and "logit_scale" not in name for name, p in named]
    decay = [p for (_, p), d in zip(named, earlier, strict=True) if d]
    no_decay = [p for (_, p), d in zip(named, earlier, strict=True) if not d]
    if len(optimizer.param_groups) == 2 and sizes == [len(decay), len(no_decay)]:
        optimizer.param_groups[0]["params"] = decay
        optimizer.param_groups[1]["params"] = no_decay


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay, cfg.layer_decay)
    for group in groups:  # the schedule scales each group's own base lr
        group["lr"] = cfg.lr * group.get("lr_scale", 1.0)
    if cfg.name == "sgd":
        for group in groups:
            group.pop("lars_adapt", None)
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    if cfg.name == "lars":
        return LARS(
            groups, lr=cfg.lr, momentum=cfg.momentum, trust_coefficient=cfg.trust_coefficient
        )
    for group in groups:
        group.pop("lars_adapt", None)
    fused = cfg.fused == "on" or (cfg.fused == "auto" and on_gpu(groups))
    betas = (cfg.beta1, cfg.beta2)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas, eps=cfg.eps, fused=fused or None)


def on_gpu(groups: list[dict]) -> bool:
    """Whether the parameters live on a GPU (where the fused AdamW kernel pays)."""
    return any(p.device.type == "cuda" for g in groups for p in g["params"])


def cosine_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """LR multiplier at ``step``: linear warmup to 1, then cosine decay to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def weight_decay_at(cfg: OptimConfig, step: int, total: int) -> float:
    """Weight decay for optimizer step ``step`` (0-based) of ``total`` on DINO's cosine from
    ``weight_decay`` to ``weight_decay_end``: ``end + (start - end) (1 + cos(pi step / total))
    / 2``."""
    start, end = cfg.weight_decay, cfg.weight_decay_end
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * min(step, total) / max(1, total)))


def set_weight_decay(optimizer: torch.optim.Optimizer, cfg: OptimConfig, step: int, total: int):
    """Before optimizer step ``step``: the scheduled weight decay on every decayed group (the
    others keep 0). A no-op without ``weight_decay_end``; after a resume the value depends on
    ``step`` alone, so the resumed run decays as the uninterrupted one."""
    if cfg.weight_decay_end is None:
        return
    value = weight_decay_at(cfg, step, total)
    for i, group in enumerate(optimizer.param_groups):
        if group.get("decayed", i == 0):
            group["weight_decay"] = value


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: cosine_factor(step, cfg.warmup_steps, total_steps, cfg.min_lr_ratio),
    )


def apply_settings(
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    cfg: OptimConfig,
    step: int,
) -> None:
    """After a resume: the current ``optim.*`` values replace the checkpoint's (loading an
    optimizer restores its saved lr, betas, eps and weight decay). The schedule is rebuilt from
    the current config and continues at ``step``; the moments (AdamW state) are kept."""
    scales = [group.get("lr_scale", 1.0) for group in optimizer.param_groups]
    scheduler.base_lrs = [cfg.lr * scale for scale in scales]
    factor = scheduler.lr_lambdas[0](step)
    for i, (group, scale) in enumerate(zip(optimizer.param_groups, scales, strict=True)):
        decayed = group.get("decayed", i == 0)  # checkpoints before layer decay: [decayed, not]
        weight_decay = cfg.weight_decay if decayed else 0.0
        group.update(
            initial_lr=cfg.lr * scale, lr=cfg.lr * scale * factor, weight_decay=weight_decay
        )
        if "betas" in group:  # AdamW
            group.update(betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
        if "momentum" in group:  # SGD, LARS
            group.update(momentum=cfg.momentum)
