"""Every objective's settings (``objective.<name>.*``), apart from the objectives themselves, so
the configuration and ``vlcontrast config --keys`` read them without importing torch. Each
objective module imports its own dataclass from here; ``config.ObjectiveConfig`` holds one of
each."""

from __future__ import annotations

from dataclasses import dataclass, field

from vlcontrast.schema import NON_NEGATIVE, POSITIVE, between, choices

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


@dataclass
class MoCoConfig:
    """``objective.moco.*`` (MoCo v2)"""

    temperature: float = field(default=0.2, metadata=POSITIVE)  # MoCo v2
    momentum: float = field(default=0.999, metadata=between(0.0, 1.0))  # MoCo
    # keys kept as negatives (MoCo: 65536); a multiple of the global batch
    queue_size: int = field(default=65536, metadata=POSITIVE)
    symmetric: bool = False  # both views as queries (2x the compute), one enqueue per step


@dataclass
class MoCoV3Config:
    """``objective.mocov3.*``"""

    temperature: float = field(default=0.2, metadata=POSITIVE)  # MoCo v3, ViT
    momentum: float = field(default=0.99, metadata=between(0.0, 1.0))  # cosine to momentum_end
    momentum_end: float = field(default=1.0, metadata=between(0.0, 1.0))


@dataclass
class BYOLConfig:
    """``objective.byol.*``"""

    momentum: float = field(default=0.996, metadata=between(0.0, 1.0))  # BYOL, cosine to end
    momentum_end: float = field(default=1.0, metadata=between(0.0, 1.0))


@dataclass
class BarlowTwinsConfig:
    """``objective.barlow_twins.*``"""

    lambda_offdiag: float = field(default=5e-3, metadata=POSITIVE)  # Zbontar et al., 5e-3


@dataclass
class SupConConfig:
    """``objective.supcon.*``"""

    temperature: float = field(default=0.1, metadata=POSITIVE)  # Khosla et al., 0.1


@dataclass
class SLIPConfig:
    """``objective.slip.*``"""

    ssl_scale: float = field(default=1.0, metadata=NON_NEGATIVE)  # SLIP: 1.0
    temperature: float = field(default=0.1, metadata=POSITIVE)  # SLIP's SimCLR term: 0.1
