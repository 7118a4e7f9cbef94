"""Bad-data accounting in the trainer: skipped samples by reason and by shard, and the stop rule.

Workers count every skipped sample by (reason, shard) and send the counts with their batches
(``shards``); :class:`BadData` adds them up, feeds the progress line, ``metrics.jsonl`` and the
end-of-run summary, and stops the run (naming the shard with most failures) when more than
``max_fraction`` of the samples read so far failed, once ``min_samples`` were read. The counts are
saved in checkpoints, so a resumed run reports the whole run's totals.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch

from vlcontrast import distributed
from vlcontrast.data.shards import DataError


@dataclass
class BadData:
    max_fraction: float = 1.0
    min_samples: int = 0
    seen: int = 0  # samples read (good and bad)
    by_reason: Counter = field(default_factory=Counter)
    by_shard: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))

    @property
    def skipped(self) -> int:
        return sum(self.by_reason.values())

    def add(self, batch: dict[str, Any]) -> None:
        self.seen += batch.get("seen", 0)
        for reason, url, n in batch.get("skipped", ()):
            self.by_reason[reason] += n
            self.by_shard[url][reason] += n

    def check(self, seen: int | None = None, skipped: int | None = None) -> None:
        """Raise :class:`DataError` when too many samples failed. ``seen``/``skipped``: the
        totals over all ranks (so that every rank stops at the same step), default this
        process's; the worst shard named is this process's worst."""
        seen = self.seen if seen is None else seen
        skipped = self.skipped if skipped is None else skipped
        if seen < max(1, self.min_samples) or skipped <= self.max_fraction * seen:
            return
        worst = ""
        if self.by_shard:
            url, counts = max(self.by_shard.items(), key=lambda item: sum(item[1].values()))
            reasons = ", ".join(f"{r} {n}" for r, n in counts.most_common())
            worst = f"; worst shard: {url} ({reasons})"
        raise DataError(
            f"{skipped} of {seen} samples read so far failed ({skipped / seen:.1%} > "
            f"data.max_bad_fraction={self.max_fraction}){worst}. Fix or drop that shard, or "
            f"raise data.max_bad_fraction; reasons here: {self.reasons()}"
        )

    def check_all_ranks(self, device: torch.device | str = "cpu") -> None:
        """:meth:`check` on the totals of all ranks, so that all ranks stop at the same step
        instead of one leaving the others waiting in a collective (one process: :meth:`check`).
        """
        totals = torch.tensor([self.seen, self.skipped], dtype=torch.long, device=device)
        seen, skipped = (int(v) for v in distributed.all_reduce(totals))
        self.check(seen, skipped)

    def reasons(self) -> str:
        return ", ".join(f"{r}={n}" for r, n in self.by_reason.most_common()) or "none"

    def summary(self, top: int = 5) -> str:
        """End-of-run report: totals by reason and the shards with most failures."""
        if not self.skipped:
            return f"data: {self.seen} samples read, none skipped"
        lines = [
            f"data: {self.seen} samples read, {self.skipped} skipped "
            f"({self.skipped / max(1, self.seen):.2%}): {self.reasons()}"
        ]
        worst = sorted(self.by_shard.items(), key=lambda item: -sum(item[1].values()))[:top]
        for url, counts in worst:
            lines.append(f"  {sum(counts.values()):6d}  {url}  ({dict(counts)})")
        return "\n".join(lines)

    def state_dict(self) -> dict[str, Any]:
        shards = {url: dict(counts) for url, counts in self.by_shard.items()}
        return {"seen": self.seen, "by_reason": dict(self.by_reason), "by_shard": shards}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seen = int(state.get("seen", 0))
        self.by_reason = Counter(state.get("by_reason", {}))
        self.by_shard = defaultdict(Counter, {u: Counter(c) for u, c in state["by_shard"].items()})
