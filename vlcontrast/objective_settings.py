"""Every objective's settings (``objective.<name>.*``), apart from the objectives themselves, so
the configuration and ``vlcontrast config --keys`` read them without importing torch. Each
objective module imports its own dataclass from here; ``config.ObjectiveConfig`` holds one of
each."""

from __future__ import annotations

from dataclasses import dataclass, field

from vlcontrast.data.view_presets import MultiCropConfig, multicrop, multicrop_groups
from vlcontrast.schema import NON_NEGATIVE, POSITIVE, ConfigError, between, choices


@dataclass
class HeadConfig:
    """An MLP head a method owns (projector, predictor): ``layers`` Linear layers, each hidden
    one followed by [batch norm] and ``act`` (ReLU; GELU in DINO's head), the last one by
    ``out_norm`` (``none``; ``bn``: batch norm, SimCLR v2 and lightly's
    ``SimCLRProjectionHead``; ``bn_noaffine``: batch norm without gain and bias, SimSiam's and
    MoCo v3's heads)."""

    layers: int = field(default=2, metadata=POSITIVE)
    hidden: int = field(default=0, metadata=NON_NEGATIVE)  # 0: the input's width
    dim: int = field(default=128, metadata=NON_NEGATIVE)  # output width; 0: the input's width
    bn: bool = True  # batch norm after every hidden layer
    out_norm: str = field(default="none", metadata=choices("none", "bn", "bn_noaffine"))
    act: str = field(default="relu", metadata=choices("relu", "gelu"))


def head(layers: int, hidden: int, dim: int, bn: bool, out_norm: str = "none", act: str = "relu"):
    """A ``field`` holding the paper's head (a fresh dataclass per config)."""
    return field(default_factory=lambda: HeadConfig(layers, hidden, dim, bn, out_norm, act))


# Objectives whose model carries a learnable logit bias (``model.logit_bias`` None resolves to
# whether the objective is one of these)
USES_LOGIT_BIAS = frozenset({"siglip"})


@dataclass
class CLIPConfig:
    """``objective.clip.*``"""

    # Across ranks: "local" scores this rank's rows against all gathered columns (2·B·N logits
    # per rank), "global" has every rank compute the whole N x N loss. Same gradients.
    gather: str = field(default="local", metadata=choices("local", "global"))
    # Blockwise loss (memory linear in the batch): on, off or auto (global batch >= tiled_from)
    tiled: str = field(default="auto", metadata=choices("auto", "on", "off"))
    # auto tiles from this global batch: below it the textbook loss is as fast on a GPU
    # (benchmarks/loss_memory.py: 1.4x the time on an H100 at 16384 while it fits)
    tiled_from: int = field(default=8192, metadata=POSITIVE)
    tile_size: int = field(default=1024, metadata=POSITIVE)  # tile edge; memory O(tile^2)


@dataclass
class SigLIPConfig:
    """``objective.siglip.*``: nothing to set yet (the bias and scale inits are model keys)."""


@dataclass
class SimCLRConfig:
    """``objective.simclr.*``"""

    # SimCLR paper, table 5: 0.1 is best at its batch sizes (0.5 for CIFAR-10's in appendix B.9)
    temperature: float = field(default=0.1, metadata=POSITIVE)
    # SimCLR v1: 2 layers, hidden = the feature width, 128 out; the output batch norm of SimCLR
    # v2 and lightly's SimCLRProjectionHead (worth about 3 kNN points in lightly's own run)
    projector: HeadConfig = head(2, 0, 128, True, "bn")


@dataclass
class MoCoConfig:
    """``objective.moco.*`` (MoCo v2)"""

    temperature: float = field(default=0.2, metadata=POSITIVE)  # MoCo v2
    momentum: float = field(default=0.999, metadata=between(0.0, 1.0))  # MoCo
    # keys kept as negatives (MoCo: 65536); a multiple of the global batch
    queue_size: int = field(default=65536, metadata=POSITIVE)
    symmetric: bool = False  # both views as queries (2x the compute), one enqueue per step
    # MoCo v2's code: Linear(F, F) -> ReLU -> Linear(F, 128), no batch norm
    projector: HeadConfig = head(2, 0, 128, False)


@dataclass
class MoCoV3Config:
    """``objective.mocov3.*``"""

    temperature: float = field(default=0.2, metadata=POSITIVE)  # MoCo v3, ViT
    momentum: float = field(default=0.99, metadata=between(0.0, 1.0))  # cosine to momentum_end
    momentum_end: float = field(default=1.0, metadata=between(0.0, 1.0))
    # MoCo v3's code (ViT): 3 layers of 4096, 256 out, batch norm without affine at the output;
    # predictor 2 layers of 4096, the same
    projector: HeadConfig = head(3, 4096, 256, True, "bn_noaffine")
    predictor: HeadConfig = head(2, 4096, 0, True, "bn_noaffine")


@dataclass
class BYOLConfig:
    """``objective.byol.*``"""

    momentum: float = field(default=0.996, metadata=between(0.0, 1.0))  # BYOL, cosine to end
    momentum_end: float = field(default=1.0, metadata=between(0.0, 1.0))
    # BYOL, section 3.3: Linear(4096) -> BN -> ReLU -> Linear(256), the predictor the same
    projector: HeadConfig = head(2, 4096, 256, True)
    predictor: HeadConfig = head(2, 4096, 0, True)


@dataclass
class SimSiamConfig:
    """``objective.simsiam.*``"""

    # SimSiam's code: 3 layers of the feature width (2048), batch norm without affine at the
    # output; predictor 2048 -> 512 -> 2048 (a bottleneck), no output norm
    projector: HeadConfig = head(3, 2048, 2048, True, "bn_noaffine")
    predictor: HeadConfig = head(2, 512, 0, True)


@dataclass
class BarlowTwinsConfig:
    """``objective.barlow_twins.*``"""

    lambda_offdiag: float = field(default=5e-3, metadata=POSITIVE)  # Zbontar et al., 5e-3
    # Barlow Twins' code: 3 layers of 8192 with batch norm, 8192 out
    projector: HeadConfig = head(3, 8192, 8192, True)


@dataclass
class DenseCLConfig(MoCoConfig):
    """``objective.densecl.*``: MoCo v2 (its settings above) plus DenseCL's dense head and
    second queue (Wang et al. 2021)."""

    # DenseCL's neck: 1x1 conv (F -> F) -> ReLU -> 1x1 conv (F -> 128) on every location
    dense_head: HeadConfig = head(2, 0, 128, False)
    loss_lambda: float = field(default=0.5, metadata=between(0.0, 1.0))  # DenseCL: 0.5
    # optimizer steps trained on the global loss alone (lambda 0) before the dense term joins,
    # so the backbone's correspondences are no longer random (DenseCL's paper and its
    # DenseCLWarmupHook, start_iters; off in its released configs)
    dense_start_steps: int = field(default=0, metadata=NON_NEGATIVE)

    def check(self) -> None:
        if self.symmetric:
            raise ConfigError("objective.densecl.symmetric: DenseCL has one query view per step")


@dataclass
class SwAVConfig:
    """``objective.swav.*`` (Caron et al. 2020; the values of its ``main_swav.py``)."""

    temperature: float = field(default=0.1, metadata=POSITIVE)
    epsilon: float = field(default=0.05, metadata=POSITIVE)  # Sinkhorn's entropic weight
    sinkhorn_iterations: int = field(default=3, metadata=POSITIVE)
    prototypes: int = field(default=3000, metadata=POSITIVE)  # ImageNet: 3000
    # prototypes take no step for this many steps; -1: one epoch, at most 10% of the run
    # (SwAV's scripts: 313 at batch 4096 and 5005 at 256, an ImageNet epoch each; 313 steps
    # would freeze them for nearly half of the digits benchmark's 60 epochs)
    freeze_prototypes_steps: int = field(default=-1, metadata=between(-1, 10**9))
    # embeddings of past batches whose scores join Sinkhorn's (0: none; SwAV: 3840 at batch
    # 256), all ranks' together; a multiple of the global batch
    queue_size: int = field(default=0, metadata=NON_NEGATIVE)
    queue_start_epochs: float = field(default=15.0, metadata=NON_NEGATIVE)  # SwAV: epoch 15
    crops: MultiCropConfig = multicrop([0.14, 1.0], 6, [0.05, 0.14])  # 2x224 + 6x96
    # SwAV's code: Linear(F, 2048) -> BN -> ReLU -> Linear(2048, 128)
    projector: HeadConfig = head(2, 2048, 128, True)

    def check(self) -> None:
        check_crops(self.crops, "swav")


@dataclass
class DINOConfig:
    """``objective.dino.*`` (Caron et al. 2021; the defaults of its ``main_dino.py``)."""

    # the last layer's outputs; 0: fitted to the backbone (``objectives/dino.py``,
    # ``fitted_out_dim``): DINO's 65,536 from ViT-S/16's 21.7M parameters up (the smallest
    # backbone DINO trained), else 4,096 (the ablation checkpoint DINO's authors released,
    # dino_k4096; solo-learn's CIFAR recipe). On the README's tiny ViT the 65,536-wide layer
    # held 16.8M of the student's 22.6M weights and took about half of each step
    # (benchmarks/dino_head.py)
    out_dim: int = field(default=0, metadata=NON_NEGATIVE)
    norm_last_layer: bool = True  # weight norm with its gain fixed at 1 (ViT-S: True)
    student_temp: float = field(default=0.1, metadata=POSITIVE)
    # teacher temperature: linear from warmup_teacher_temp to teacher_temp over the warm-up
    # (the released ViT-S/16: 0.04 -> 0.07 over 30 epochs)
    teacher_temp: float = field(default=0.04, metadata=POSITIVE)
    warmup_teacher_temp: float = field(default=0.04, metadata=POSITIVE)
    warmup_teacher_temp_epochs: float = field(default=0.0, metadata=NON_NEGATIVE)
    center_momentum: float = field(default=0.9, metadata=between(0.0, 1.0))
    momentum: float = field(default=0.996, metadata=between(0.0, 1.0))  # cosine to momentum_end
    momentum_end: float = field(default=1.0, metadata=between(0.0, 1.0))
    # -1: one epoch (DINO's default), at most 10% of the run, none if the epoch's length is
    # unknown (a fixed epoch froze a third of a 3-epoch run, and stopped a run of unknown size)
    freeze_last_layer_epochs: float = field(default=-1.0, metadata=between(-1.0, 1e9))
    crops: MultiCropConfig = multicrop([0.4, 1.0], 8, [0.05, 0.4])  # 2x224 + 8x96
    # DINOHead: 3 layers, 2048 hidden, GELU, no batch norm, 256-d bottleneck (then the
    # weight-normed last layer of out_dim)
    projector: HeadConfig = head(3, 2048, 256, False, act="gelu")

    def check(self) -> None:
        check_crops(self.crops, "dino")


def check_crops(crops: MultiCropConfig, method: str) -> None:
    """The crops' scales and augmentation keys, before anything is built."""
    try:
        multicrop_groups(crops, method, 224, f"objective.{method}.crops")
    except ValueError as err:
        raise ConfigError(str(err)) from None


@dataclass
class SupConConfig:
    """``objective.supcon.*``"""

    temperature: float = field(default=0.1, metadata=POSITIVE)  # Khosla et al., 0.1
    # SupContrast's code (head='mlp'): Linear(F, F) -> ReLU -> Linear(F, 128)
    projector: HeadConfig = head(2, 0, 128, False)


@dataclass
class FinetuneConfig:
    """``objective.finetune.*``: fine-tuning a CLIP's image tower on labelled images through
    its own zero-shot head (objectives/finetune.py)."""

    # class names in label order: a classes file (JSON or one per line); default: the
    # classes.json beside the training shards (what `vlcontrast data convert` writes)
    classes: str = ""
    # prompt templates of the head (as eval's): openai_imagenet, generic, a file, or literals
    # with {}; default: the classes file's, else generic
    templates: list[str] = field(default_factory=list)


@dataclass
class MetricConfig:
    """``objective.metric.*``: metric learning on labelled images (two views each, labels from
    ``data.label_key``), with a loss and a miner on the gathered batch (losses/metric.py,
    losses/miners.py)."""

    loss: str = field(
        default="triplet",
        metadata=choices("triplet", "contrastive", "npair", "logistic", "multi_similarity"),
    )
    # none: every pair or triplet; semi_hard / hard / batch_hard: FaceNet's and Hermans et al.'s
    # triplets (triplet loss); multi_similarity: Wang et al.'s pairs (multi_similarity loss)
    miner: str = field(
        default="semi_hard",
        metadata=choices("none", "semi_hard", "hard", "batch_hard", "multi_similarity"),
    )
    # triplet margin, also the semi-hard miner's (one margin, not two: pytorch-metric-learning's
    # issue 466); 0.2 is FaceNet's on unit-norm embeddings
    margin: float = field(default=0.2, metadata=NON_NEGATIVE)
    distance: str = field(default="euclidean", metadata=choices("euclidean", "cosine"))
    soft: bool = False  # soft-margin triplet loss (Hermans et al. 2017)
    swap: bool = False  # distance swap (Balntas et al. 2016)
    # contrastive loss (Hadsell et al. 2006): positive and negative margins, squared hinge
    pos_margin: float = field(default=0.0, metadata=NON_NEGATIVE)
    neg_margin: float = field(default=1.0, metadata=NON_NEGATIVE)
    power: int = field(default=2, metadata=between(1, 2))
    l2_reg: float = field(default=0.02, metadata=NON_NEGATIVE)  # N-pair (Sohn 2016: 0.02)
    # multi-similarity (Wang et al. 2019): alpha 2, beta 50, base 0.5, mining epsilon 0.1
    alpha: float = field(default=2.0, metadata=POSITIVE)
    beta: float = field(default=50.0, metadata=POSITIVE)
    base: float = 0.5
    epsilon: float = field(default=0.1, metadata=NON_NEGATIVE)
    # pytorch-metric-learning's examples: an embedding layer of 128 on the backbone's features
    projector: HeadConfig = head(1, 0, 128, False)

    def check(self) -> None:
        """The miner must mine what the loss takes: triplets for the triplet loss, the
        multi-similarity pairs for that loss, nothing for the others."""
        triplet_miners = ("none", "semi_hard", "hard", "batch_hard")
        if self.loss == "triplet" and self.miner not in triplet_miners:
            raise ConfigError(
                f"objective.metric.miner: {self.miner!r} mines pairs; the triplet loss takes "
                f"{', '.join(triplet_miners)}"
            )
        wanted = ("none", "multi_similarity") if self.loss == "multi_similarity" else ("none",)
        if self.loss != "triplet" and self.miner not in wanted:
            raise ConfigError(
                f"objective.metric.miner: the {self.loss} loss takes miner {' or '.join(wanted)}, "
                f"not {self.miner!r}"
            )


@dataclass
class SLIPConfig:
    """``objective.slip.*``"""

    ssl_scale: float = field(default=1.0, metadata=NON_NEGATIVE)  # SLIP: 1.0
    temperature: float = field(default=0.1, metadata=POSITIVE)  # SLIP's SimCLR term: 0.1
    # SLIP's image_mlp on the image tower's features: 3 layers of 4096 with batch norm, 256 out
    head: HeadConfig = head(3, 4096, 256, True)


@dataclass
class TextPairsConfig:
    """``objective.text_pairs.*``: sentence embeddings from (anchor, positive[, hard negatives])
    text pairs with in-batch negatives, or unsupervised SimCSE (losses/pairs.py). The anchor is
    ``data.caption_key``."""

    # pairs: the positive is read from positive_key; simcse: the anchor encoded twice, two
    # dropout masks (Gao et al. 2021, unsupervised SimCSE), so any caption shards train it
    mode: str = field(default="pairs", metadata=choices("pairs", "simcse"))
    positive_key: str = "json.positive"  # a member (EXT) or json.FIELD, as data.caption_key
    negatives_key: str = "json.negatives"  # a list of hard negatives per sample
    # hard negatives per anchor (the first ones of negatives_key; a sample with fewer is
    # skipped as missing_negatives); 0: in-batch negatives only
    negatives: int = field(default=0, metadata=NON_NEGATIVE)
    # 0.05: SimCSE's, and sentence-transformers' MultipleNegativesRankingLoss scale 20
    temperature: float = field(default=0.05, metadata=POSITIVE)
    symmetric: bool = False  # add positive -> anchor (MultipleNegativesSymmetricRankingLoss)
    # symmetric without hard negatives is the CLIP loss: tiled from this global batch
    tiled_from: int = field(default=8192, metadata=POSITIVE)

    def check(self) -> None:
        if self.mode == "simcse" and self.negatives:
            raise ConfigError(
                "objective.text_pairs.negatives: simcse mode has no hard negatives (its "
                "positive is the anchor itself); set mode=pairs or negatives=0"
            )


@dataclass
class ObjectiveConfig:
    """What the model is trained for; each objective's own settings live beside it."""

    name: str = "clip"  # a key of vlcontrast.objectives.OBJECTIVES
    clip: CLIPConfig = field(default_factory=CLIPConfig)
    siglip: SigLIPConfig = field(default_factory=SigLIPConfig)
    simclr: SimCLRConfig = field(default_factory=SimCLRConfig)
    moco: MoCoConfig = field(default_factory=MoCoConfig)
    mocov3: MoCoV3Config = field(default_factory=MoCoV3Config)
    byol: BYOLConfig = field(default_factory=BYOLConfig)
    simsiam: SimSiamConfig = field(default_factory=SimSiamConfig)
    barlow_twins: BarlowTwinsConfig = field(default_factory=BarlowTwinsConfig)
    supcon: SupConConfig = field(default_factory=SupConConfig)
    metric: MetricConfig = field(default_factory=MetricConfig)
    slip: SLIPConfig = field(default_factory=SLIPConfig)
    text_pairs: TextPairsConfig = field(default_factory=TextPairsConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    swav: SwAVConfig = field(default_factory=SwAVConfig)
    dino: DINOConfig = field(default_factory=DINOConfig)
    densecl: DenseCLConfig = field(default_factory=DenseCLConfig)
