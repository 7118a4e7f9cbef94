"""The task's checkpoint part: the method's heads and state (``Objective.owned_state``), beside
the shared model's weights in ``model.safetensors``.

Checkpoints written before methods owned their heads held them elsewhere, and still resume:
the heads were in ``model.safetensors`` (an image-only model's ``image.proj.*`` and
``predictor.*``, a dual model's ``ssl_head.*``), and the momentum copy was a copy of that whole
model (``target.image.trunk.*``, ``target.image.proj.*``, ``target.predictor.*``). ``LEGACY``
maps each old name to the task's (None: no longer kept; a target's predictor was never used).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

# old name prefix -> the task's, in the order they are tried; the model file's keys come in
# with MODEL_FILE in front (``restore`` passes the model file's left-over keys so)
MODEL_FILE = "model_file/"
LEGACY: tuple[tuple[str, str | None], ...] = (
    (f"{MODEL_FILE}image.proj.", "projector."),
    (f"{MODEL_FILE}predictor.", "predictor."),
    (f"{MODEL_FILE}ssl_head.", "head."),
    ("target.image.trunk.", "target.model.image.trunk."),
    ("target.image.proj.", "target.projector."),
    ("target.predictor.", None),
)
# keys of model.safetensors that an older layout's heads left there (inference skips them)
LEGACY_MODEL_KEYS = ("image.proj.", "predictor.", "ssl_head.")


def migrate(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An older checkpoint's head and target names as the task names them."""
    out = {}
    for key, value in state.items():
        for old, new in LEGACY:
            if key.startswith(old):
                if new is not None:
                    out[new + key[len(old) :]] = value
                break
        else:
            out[key] = value
    return out


class TaskState:
    """``state_dict``/``load_state_dict`` of the task without its shared model."""

    def __init__(self, task: nn.Module):
        self.task = task

    def state_dict(self) -> dict[str, Any]:
        return self.task.owned_state()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = migrate(state)
        missing, unexpected = self.task.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("model.")]
        if missing or unexpected:
            raise RuntimeError(
                f"the checkpoint's objective state does not match objective "
                f"{type(self.task).__name__} (missing {sorted(missing)[:5]}, unexpected "
                f"{sorted(unexpected)[:5]}); was it written with another objective or heads?"
            )
