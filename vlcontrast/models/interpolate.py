"""Weight-space interpolation of two checkpoints of one architecture (WiSE-FT, Wortsman et al.
2022): ``theta = (1 - alpha) theta_A + alpha theta_B``. With A the zero-shot model and B its
fine-tuned version, alpha 0.5 keeps most of the zero-shot robustness and most of the
fine-tuned accuracy (their figure 1).

Both checkpoints are read with ``models/load.py`` (safetensors only) and must hold the same
tensors with the same shapes; a mismatch names the first key. Floating tensors are mixed in
float64 and written back in A's dtype; integer tensors (batch-norm counters) must agree and are
copied. alpha 0 and 1 return A's and B's tensors exactly. The result is written as a checkpoint
directory (A's config and tokenizer) that eval, search, export and training read.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vlcontrast.models.load import load_model, save_model_dir


def interpolate_states(
    a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    if set(a) != set(b):
        only = sorted(set(a) ^ set(b))
        raise ValueError(f"the checkpoints hold different tensors (first: {only[0]!r})")
    out = {}
    for key, x in a.items():
        y = b[key]
        if x.shape != y.shape:
            raise ValueError(f"{key}: shape {tuple(x.shape)} in A, {tuple(y.shape)} in B")
        if not x.is_floating_point():
            if not torch.equal(x, y):
                raise ValueError(f"{key}: integer tensors differ between A and B")
            out[key] = x.clone()
        elif alpha == 0:
            out[key] = x.clone()
        elif alpha == 1:
            out[key] = y.to(x.dtype).clone()
        else:
            mixed = (1 - alpha) * x.double() + alpha * y.double()
            out[key] = mixed.to(x.dtype)
    return out


def interpolate_checkpoints(a: str | Path, b: str | Path, alpha: float, out: str | Path) -> Path:
    """Write ``(1 - alpha) A + alpha B`` to the new checkpoint directory ``out``."""
    if not 0 <= alpha <= 1:
        raise ValueError(f"--alpha: expected a value in [0, 1], got {alpha}")
    model, tokenizer, cfg = load_model(a)
    other, _, _ = load_model(b)
    state = interpolate_states(model.state_dict(), other.state_dict(), alpha)
    model.load_state_dict(state)
    return save_model_dir(model, tokenizer, cfg, out)
