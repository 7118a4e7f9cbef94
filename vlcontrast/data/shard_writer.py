"""Write samples into WebDataset tar shards in img2dataset's layout, with a ``sizes.json``.

Each sample is a mapping of extension -> bytes or str (``{"jpg": b"...", "txt": "a cat"}``) plus a
``__key__``; shard ``i`` is ``{prefix}{i:05d}.tar``. Shards are written to a temporary name and
renamed when complete, so an interrupted writer never leaves a truncated shard under a real name.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def add_member(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    info.mtime = 0  # reproducible shards
    tar.addfile(info, io.BytesIO(payload))


def write_shards(
    samples: Iterable[dict[str, Any]], out_dir: str | Path, per_shard: int, prefix: str = ""
) -> dict[str, int]:
    """Write ``samples`` into shards of ``per_shard`` samples; returns {shard name: count}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sizes: dict[str, int] = {}
    tar, name, tmp = None, "", None

    def close() -> None:
        if tar is not None:
            tar.close()
            os.replace(tmp, out_dir / name)

    for index, sample in enumerate(samples):
        if index % per_shard == 0:
            close()
            name = f"{prefix}{index // per_shard:05d}.tar"
            tmp = out_dir / f".{name}.tmp"
            tar = tarfile.open(tmp, "w")
            sizes[name] = 0
        key = sample["__key__"]
        for ext, value in sample.items():
            if ext.startswith("__"):
                continue
            payload = value.encode() if isinstance(value, str) else value
            add_member(tar, f"{key}.{ext}", payload)
        sizes[name] += 1
    close()
    (out_dir / "sizes.json").write_text(json.dumps(sizes, indent=1) + "\n")
    return sizes
