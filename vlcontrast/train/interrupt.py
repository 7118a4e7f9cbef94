"""Ctrl-C during training: the first one asks the loop to stop after the step in flight; the loop
then writes a checkpoint and returns, and ``vlcontrast train`` prints where it stopped and how
to resume, exiting 130 (the shell's code for SIGINT). A second Ctrl-C raises KeyboardInterrupt
at once, which the console entry point turns into one line and 130 as well.

Under torchrun every rank receives the signal, not necessarily during the same step, so ranks
agree on the step to stop at with one all-reduce of a flag per step (a scalar; nothing when
there is one process). Only the main thread can set a signal handler; elsewhere (a notebook
thread) Ctrl-C keeps Python's default.
"""

from __future__ import annotations

import signal
import sys
import threading

import torch

from vlcontrast import distributed


class StopRequest:
    """``with StopRequest() as stop:`` ... ``if stop.agreed(device): break``."""

    def __init__(self) -> None:
        self.asked = False
        self._previous = None

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _handle(self, signum, frame) -> None:
        if self.asked:
            raise KeyboardInterrupt
        self.asked = True
        if distributed.is_main():
            print(
                "\nCtrl-C: stopping after this step and saving a checkpoint "
                "(Ctrl-C again to quit at once, without one)",
                file=sys.stderr,
            )

    def agreed(self, device: torch.device | str) -> bool:
        """Whether any rank was asked to stop (every rank calls it at the same step)."""
        if distributed.world_size() == 1:
            return self.asked
        flag = torch.tensor([float(self.asked)], device=device)
        distributed.all_reduce(flag, torch.distributed.ReduceOp.MAX)
        return bool(flag.item())
