"""Training objectives: small plug-ins that turn a batch into ``{"loss", "metrics"}``.

The training loop calls ``objective(model, batch)`` and ``objective.after_step(model)`` and never
branches on which objective it runs, so SigLIP, SimCLR and MoCo drop in beside CLIP.
"""

from vlcontrast.objectives.base import Objective
from vlcontrast.objectives.clip import CLIPObjective
from vlcontrast.objectives.siglip import SigLIPObjective

__all__ = ["CLIPObjective", "Objective", "SigLIPObjective"]
