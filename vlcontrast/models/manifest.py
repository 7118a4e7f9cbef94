"""Which files a checkpoint or model directory is read from: its ``manifest.json``, written last
by whoever writes the directory (the trainer's ``train/checkpoint.py``, consolidation, import and
export through ``models/load.py``), lists every file and names the weights' layout:
``single`` (``model.safetensors``) or ``sharded`` (``sharded/``, ``models/sharded_weights.py``).

Loading follows the manifest, never which files happen to exist: a directory holding a file the
manifest does not list, or both layouts, is refused, so planting a ``sharded/`` beside the
weights of an ordinary checkpoint changes nothing that is read. Directories written before
manifests existed are read only when they hold ``model.safetensors`` alone.
"""

from __future__ import annotations

import json
from pathlib import Path

from vlcontrast.models.sharded_weights import INDEX, SHARDS
from vlcontrast.schema import ConfigError

MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
FORMAT = 1
LAYOUTS = ("single", "sharded")


def files_of(directory: Path) -> list[str]:
    """Every file under ``directory`` (relative, '/'-separated), the manifest itself aside."""
    found = (p.relative_to(directory).as_posix() for p in directory.rglob("*"))
    return sorted(f for f in found if f != MANIFEST and not (directory / f).is_dir())


def write(directory: Path, layout: str) -> None:
    """List every file now in ``directory`` as its manifest (call after everything else)."""
    assert layout in LAYOUTS, layout
    manifest = {"format": FORMAT, "weights": layout, "files": files_of(directory)}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")


def layout(path: str | Path) -> str:
    """``single`` or ``sharded``: where ``path``'s weights are read from, after checking its
    files against its manifest (a ConfigError that says what is wrong otherwise)."""
    path = Path(path)
    if not (path / MANIFEST).is_file():
        return _unlisted_layout(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        kind, listed = manifest["weights"], manifest["files"]
        if kind not in LAYOUTS or not all(isinstance(f, str) for f in listed):
            raise ValueError("unknown layout or file list")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"this checkpoint is damaged: {path / MANIFEST} ({err})") from None
    present, listed = set(files_of(path)), set(listed)
    extra = sorted(present - listed)
    if extra:
        raise ConfigError(
            f"refusing to load {path}: it holds files that its {MANIFEST} does not list "
            f"({', '.join(extra[:5])}); something was added after it was written. Use a copy "
            f"of the checkpoint as it was written"
        )
    missing = sorted(listed - present)
    if missing:
        raise ConfigError(f"this checkpoint is damaged: {path} lacks {', '.join(missing[:5])}")
    sharded = any(f.startswith(SHARDS + "/") for f in listed)
    if (WEIGHTS in listed and sharded) or (kind == "single") != (WEIGHTS in listed):
        raise ConfigError(
            f"refusing to load {path}: its {MANIFEST} says {kind!r} weights, but it lists "
            f"{'both layouts' if sharded and WEIGHTS in listed else 'other files'}"
        )
    if kind == "sharded" and f"{SHARDS}/{INDEX}" not in listed:
        raise ConfigError(f"this checkpoint is damaged: {path} lists no {SHARDS}/{INDEX}")
    return kind


def _unlisted_layout(path: Path) -> str:
    """A directory without a manifest (written by an earlier version): ``model.safetensors``
    alone. A ``sharded/`` there is either the earlier pickled format or planted."""
    if (path / SHARDS).exists():
        if (path / WEIGHTS).exists():
            raise ConfigError(
                f"refusing to load {path}: it holds both {WEIGHTS} and {SHARDS}/ and no "
                f"{MANIFEST} to say which is meant; something was added after it was written"
            )
        from vlcontrast.models.sharded_weights import read_index

        read_index(path / SHARDS)  # refuses the earlier, pickled format with what to do
        raise ConfigError(f"refusing to load {path}: {SHARDS}/ without a {MANIFEST}")
    return "single"
