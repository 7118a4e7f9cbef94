"""The optimizer part of the run config (``optim.*``): the optimizer, its schedule and the
fine-tuning lr decay (see vlcontrast/train/optim.py). Re-exported by ``vlcontrast.config``."""

from __future__ import annotations

from dataclasses import dataclass, field

from vlcontrast.schema import NON_NEGATIVE, POSITIVE, between, choices

_choices = choices


@dataclass
class OptimConfig:
    # adamw (CLIP, OpenCLIP), sgd (momentum; MoCo, SimSiam) or lars (SimCLR, BYOL, Barlow Twins)
    name: str = field(default="adamw", metadata=_choices("adamw", "sgd", "lars"))
    lr: float = field(default=5e-4, metadata=POSITIVE)  # OpenCLIP's B/32 recipe
    weight_decay: float = field(default=0.2, metadata=NON_NEGATIVE)  # CLIP paper, OpenCLIP
    # with a value, weight decay follows a cosine from weight_decay at step 0 to this at the
    # last step (DINO: 0.04 -> 0.4, its main_dino.py's cosine_scheduler); None: constant
    weight_decay_end: float | None = field(default=None, metadata=NON_NEGATIVE)
    # CLIP paper: beta2 0.98 and eps 1e-6 keep large-batch contrastive training stable
    beta1: float = field(default=0.9, metadata=between(0.0, 1.0, high_open=True))
    beta2: float = field(default=0.98, metadata=between(0.0, 1.0, high_open=True))  # CLIP paper
    eps: float = field(default=1e-6, metadata=POSITIVE)  # CLIP paper
    # Linear warm-up steps; -1: 500 (OpenCLIP's recipes use 500-10000), at most 10% of the run
    # (a 500-step warm-up never ended in a 337-step run on the digits, and its lr never decayed)
    warmup_steps: int = field(default=-1, metadata=between(-1, 10**9))
    # cosine decays to lr * min_lr_ratio
    min_lr_ratio: float = field(default=0.0, metadata=between(0.0, 1.0))
    # max global grad norm; 0 disables. With timm's and transformers' own initialisations, 0 left
    # the digits run of benchmarks/learning.py at log(batch) (5.544 at step 70 against 5.2)
    grad_clip: float = field(default=1.0, metadata=NON_NEGATIVE)
    momentum: float = field(default=0.9, metadata=between(0.0, 1.0, high_open=True))  # sgd, lars
    # Layer-wise lr decay for fine-tuning: block i of L gets lr x layer_decay^(L - i), the
    # embeddings x layer_decay^(L + 1), the heads the full lr (train/layer_decay.py). 1: off.
    # BEiT fine-tunes ViT-B at 0.65, MAE at 0.75; from-scratch training keeps 1.
    layer_decay: float = field(default=1.0, metadata=between(0.0, 1.0))
    # AdamW's fused kernel (one launch for all parameters): auto = on a GPU; on / off
    fused: str = field(default="auto", metadata=_choices("auto", "on", "off"))
    # lars: trust ratio eta (You et al. 2017; SimCLR and BYOL use 1e-3)
    trust_coefficient: float = field(default=1e-3, metadata=POSITIVE)
