"""Mixed precision with torch's public APIs: ``torch.autocast`` around the forward passes (bf16 or
fp16) and, for fp16, a ``GradScaler`` (loss scaling, skipped steps on overflow).

Kept out of accelerate on purpose: accelerate holds the mixed-precision setting in a
process-wide singleton that refuses a second, different value, so a second run in the same
process (a notebook, a sweep, the test suite) could not change it without resetting accelerate's
private state. The scaler's state is a checkpoint part of fp16 runs.
"""

from __future__ import annotations

import contextlib

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    def __init__(self, precision: str, device: torch.device):
        self.dtype = DTYPES.get(precision)
        self.device_type = torch.device(device).type
        self.scaler = torch.amp.GradScaler(self.device_type) if precision == "fp16" else None

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def unscale(self, optimizer) -> None:
        """Before clipping: the gradients in their true scale."""
        if self.scaler:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer) -> None:
        if self.scaler:
            self.scaler.step(optimizer)  # skipped when the gradients overflowed
            self.scaler.update()
        else:
            optimizer.step()
