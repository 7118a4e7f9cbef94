"""Metric sinks: one JSON object per line in ``metrics.jsonl``, TensorBoard scalars, stdout.

Only the main process writes. Nested metric dicts are flattened with ``/`` (``skipped/corrupt``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


def flatten(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)):
            flat[f"{prefix}{key}"] = value
    return flat


class MetricsLogger:
    def __init__(self, run_dir: str | Path, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self.writer = None
        if enabled and self.path.is_file():
            mend_torn_tail(self.path)
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        flat = flatten(metrics)
        with open(self.path, "a") as handle:
            handle.write(json.dumps({"step": step, "time": time.time(), **flat}) + "\n")
        if self.writer is not None:
            for key, value in flat.items():
                self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def mend_torn_tail(path: Path) -> None:
    """Cut a last line that a crash left without its newline, so the next row starts clean."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as handle:
            handle.truncate(data.rfind(b"\n") + 1)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a JSONL log; a line torn by a crash or a full disk is skipped."""
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows
