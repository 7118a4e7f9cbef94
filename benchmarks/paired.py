"""Paired comparisons over seeds: run a benchmark script once per seed, several at a time, and
say how far method B is ahead of method A on the same seeds.

Each seed's run is a child process (``SCRIPT ARGS --seed S --json DIR/S.json``, its output in
``DIR/S.log``) with ``OMP_NUM_THREADS`` set to the cores over the jobs, so runs that share the
machine do not fight for its cores. The comparison is the paired one: the mean of the per-seed
differences, their standard deviation and standard error, and the one-sided sign test (is B
ahead on more seeds than chance gives?), which assumes nothing about how the differences are
spread.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def parse_seeds(text: str) -> list[int]:
    """``"0-3,8"`` -> ``[0, 1, 2, 3, 8]``."""
    seeds = []
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        seeds.extend(range(int(first), int(last or first) + 1))
    return seeds


def sign_test(wins: int, losses: int) -> float:
    """One-sided sign test: P(at least ``wins`` of ``wins + losses`` fair coin flips), ties left
    out."""
    n = wins + losses
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2**n if n else 1.0


def paired_stats(a: list[float], b: list[float]) -> dict[str, float]:
    """Differences ``b - a`` seed by seed: their count, mean, standard deviation (n - 1),
    standard error, the seeds where b is ahead and behind, and the sign test's p."""
    diffs = [y - x for x, y in zip(a, b, strict=True)]
    n = len(diffs)
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1)) if n > 1 else float("nan")
    wins, losses = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
    return {
        "n": n,
        "mean": mean,
        "sd": sd,
        "se": sd / math.sqrt(n),
        "wins": wins,
        "losses": losses,
        "p": sign_test(wins, losses),
    }


def describe(what: str, stats: dict[str, float]) -> str:
    ratio = stats["mean"] / stats["se"] if stats["se"] > 0 else float("nan")
    return (
        f"{what} over {stats['n']} seeds: mean {stats['mean']:+.4f} (sd {stats['sd']:.4f}, "
        f"se {stats['se']:.4f}, {ratio:+.1f} se from zero); ahead on "
        f"{stats['wins']}, behind on {stats['losses']}; one-sided sign test p = {stats['p']:.3f}"
    )


def code_hash(script: str) -> str:
    """A hash of ``script`` and every source file of the vlcontrast package it runs."""
    import hashlib

    import vlcontrast

    digest = hashlib.sha256(Path(script).read_bytes())
    for path in sorted(Path(vlcontrast.__file__).parent.rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def run_seeds(script: str, args: list[str], seeds: list[int], jobs: int, out: Path) -> dict:
    """``{seed: the JSON its run wrote}``, running ``jobs`` seeds at a time; a failed run stops
    everything with the end of its log. A seed whose run finished in ``out`` with the same
    arguments and the same code (``S.run.json``: the arguments and a hash of the script and
    the library) is read back, not run again, so a study of many seeds can be stopped and
    continued."""
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // jobs))}
    stamp = {"args": args, "code": code_hash(script)}

    def one(seed: int) -> dict:
        result, log, ran = out / f"{seed}.json", out / f"{seed}.log", out / f"{seed}.run.json"
        if result.is_file() and ran.is_file() and json.loads(ran.read_text()) == stamp:
            print(f"seed {seed}: kept from an earlier run ({result})", flush=True)
            return json.loads(result.read_text())
        ran.unlink(missing_ok=True)
        command = [sys.executable, script, *args, "--seed", str(seed), "--json", str(result)]
        with open(log, "w") as sink:
            done = subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT, env=env)
        if done.returncode != 0:
            tail = log.read_text()[-2000:]
            raise RuntimeError(f"seed {seed} failed (exit {done.returncode}); {log}:\n{tail}")
        print(f"seed {seed} done ({log})", flush=True)
        ran.write_text(json.dumps(stamp))  # last: marks the seed done
        return json.loads(result.read_text())

    with ThreadPoolExecutor(jobs) as pool:
        return dict(zip(seeds, pool.map(one, seeds), strict=True))
