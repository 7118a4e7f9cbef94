"""Shared measurement helpers of the benchmark scripts: process memory and isolated runs.

Each memory figure is taken in a fresh subprocess (``run_isolated``), so one variant's peak
cannot hide inside another's.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

import torch

GIB = 1024**3


def rss_bytes() -> int:
    """Resident memory of this process now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def reset_peak() -> None:
    """Restart the peak-RSS count at the current RSS (Linux: ``5`` to ``/proc/self/clear_refs``),
    so that transients before the measured call (building its inputs) are not counted."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_bytes() -> int:
    """Peak resident memory of this process since start or the last ``reset_peak``."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def mem_available(device: str = "cpu") -> int:
    if device.startswith("cuda"):
        return torch.cuda.mem_get_info()[0]
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("MemAvailable not found in /proc/meminfo")


def run_isolated(script: str, args: list[str]) -> dict:
    """Run ``script args`` in a fresh interpreter; its last stdout line is a JSON result.

    glibc's malloc is told to serve every allocation over 1 MiB with mmap, so freed tensors go
    back to the OS at once and peak RSS tracks live memory, not heap fragmentation (without it
    the same call measured anywhere between 60 and 400 MiB from run to run).
    """
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
    out = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{script} {' '.join(args)} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])
