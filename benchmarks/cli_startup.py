"""How fast the command line answers: wall time and peak memory of ``vlcontrast --help``, every
sub-command's ``--help`` and an argument error, each in a fresh process, against a process that
only imports torch (what every command paid before the CLI imported the library lazily).

    python benchmarks/cli_startup.py
"""

from __future__ import annotations

import subprocess
import sys

COMMANDS = [
    ["--help"],
    *[[c, "--help"] for c in ("train", "eval", "index", "search", "serve", "data", "import")],
    ["config", "--keys"],
    ["config", "configs/clip_b32.yaml"],
    ["train"],  # an argument error
]


WRAPPER = (
    "import resource, subprocess, sys, time; start = time.perf_counter(); "
    "subprocess.run(sys.argv[1:], capture_output=True); "
    "print(time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def measure(args: list[str]) -> tuple[float, float]:
    """Seconds and peak RSS (MB) of ``python args``, run by a fresh wrapper process so that
    the peak is this command's alone."""
    out = subprocess.run(
        [sys.executable, "-c", WRAPPER, sys.executable, *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return float(out[0]), float(out[1]) / 1024


def main() -> None:
    base_s, base_mb = measure(["-c", "import torch"])
    print(f"baseline `import torch`: {base_s:.2f} s, {base_mb:.0f} MB")
    print("| command | seconds | peak MB | time vs import torch |")
    print("|---|---|---|---|")
    for args in COMMANDS:
        seconds, mb = measure(["-m", "vlcontrast.cli", *args])
        shown = " ".join(["vlcontrast", *args])
        print(f"| `{shown}` | {seconds:.2f} | {mb:.0f} | {seconds / base_s:.2f}x |")


if __name__ == "__main__":
    main()
