"""The run directory (``train.output_dir``) across fresh runs and resumes.

* It must be a writable directory, checked before anything is built (a file, a read-only
  mount or a missing permission is one message naming ``train.output_dir``).
* A fresh run refuses a directory that already holds another run's ``metrics.jsonl`` or
  checkpoints, unless ``train.overwrite=true``, which moves them aside: nothing a user wrote is
  lost, and no log mixes two runs.
* A resume from step k rolls the directory back to step k: checkpoints after k are renamed into
  ``checkpoints/retired/`` (an abandoned newer timeline must not be what ``train.resume=latest``
  picks after the next crash), and ``metrics.jsonl`` keeps only its rows up to step k, so the
  re-run steps are logged once.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from vlcontrast.config import Config, ConfigError
from vlcontrast.train import checkpoint

METRICS = "metrics.jsonl"


def check_writable(cfg: Config) -> None:
    run_dir = Path(cfg.train.output_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"train.output_dir: {run_dir} is a file, not a directory")
    # probe the directory, or the nearest one that exists: nothing is created on disk until
    # the whole config is known to be good (and ranks probing at once never race)
    target = next(p for p in (run_dir, *run_dir.parents) if p.exists())
    try:
        if not target.is_dir():
            raise NotADirectoryError(20, f"{target} is a file")
        probe = target / f".vlcontrast-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"train.output_dir: cannot write to {run_dir} ({err.strerror})") from None


def check_fresh(cfg: Config, resume_from: Path | None) -> None:
    """A fresh run needs an empty run directory, or ``train.overwrite=true``."""
    if resume_from is not None or cfg.train.resume == "latest":
        return
    run_dir = Path(cfg.train.output_dir)
    old = [p for p in (run_dir / METRICS, *checkpoint.all_checkpoints(run_dir / "checkpoints"))]
    old = [p for p in old if p.exists()]
    if not old:
        return
    if not cfg.train.overwrite:
        raise ConfigError(
            f"train.output_dir: {run_dir} already holds a run ({old[0].name}); continue it with "
            f"train.resume=latest, choose another train.output_dir, or set train.overwrite=true "
            f"to move the old run aside"
        )
    aside = run_dir / f"previous-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    aside.mkdir()
    for path in old:
        path.rename(aside / path.name)
    print(f"train.overwrite: the previous run's files are in {aside}")


def roll_back(run_dir: Path, step: int) -> None:
    """After resuming from ``step``: retire later checkpoints, cut the log at ``step``."""
    root = run_dir / "checkpoints"
    later = [p for p in checkpoint.all_checkpoints(root) if checkpoint.step_of(p) > step]
    if later:
        retired = root / "retired"
        retired.mkdir(exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for path in later:
            path.rename(retired / f"{path.name}-{stamp}")
        names = ", ".join(p.name for p in later)
        print(f"resuming from step {step}: later checkpoints ({names}) moved to {retired}")
    truncate_metrics(run_dir / METRICS, step)


def truncate_metrics(path: Path, step: int) -> None:
    """Keep the rows up to ``step`` (and drop a torn last line), atomically."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line torn by a crash or a full disk
        if row.get("step", 0) <= step:
            kept.append(line)
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)
