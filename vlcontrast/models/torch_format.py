"""Third-party weights that exist only in torch's own format (an OpenCLIP ``.pt``, a Hugging
Face ``pytorch_model.bin``, this project's pre-safetensors ``train_state.pt``): the one place
they are read, always with ``torch.load(weights_only=True)``, which rebuilds tensors and plain
containers and refuses any other object instead of running its code. Safetensors files are
preferred wherever both exist (``models/hf_clip.py``).

That promise holds only from torch 2.10: a crafted file ran code through ``weights_only=True``
before 2.6 (CVE-2025-32434) and could corrupt memory before 2.10 (CVE-2026-24747). So an older
torch reads no pickle at all (:data:`SAFE_TORCH`), whatever ``pip install --no-deps`` left.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from vlcontrast.schema import ConfigError

SAFE_TORCH = (2, 10)  # the first torch whose weights_only unpickler has no known hole


def torch_release(version: str) -> tuple[int, int]:
    """(major, minor) of a torch version string such as ``2.14.1+cu130``."""
    found = re.match(r"(\d+)\.(\d+)", version)
    return (int(found.group(1)), int(found.group(2))) if found else (0, 0)


def load_tensors_only(file: str | Path, what: str, allowed: list | tuple = ()) -> Any:
    """``torch.load(file, weights_only=True)`` on the CPU, ``allowed`` extra globals admitted;
    a file holding anything else, or a damaged one, is one ConfigError naming the file and what
    to do (``what``: the option or command it was given to)."""
    file = Path(file)
    if torch_release(torch.__version__) < SAFE_TORCH:
        raise ConfigError(
            f"{what}: {file} is a pickle, and torch {torch.__version__}'s weights_only loader "
            f"can be made to run code (fixed in torch {SAFE_TORCH[0]}.{SAFE_TORCH[1]}): "
            f"pip install -U torch torchvision, or use a .safetensors copy of these weights"
        )
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()  # torch's bold, as plain text
        first = text.splitlines()[0][:200] if text else type(err).__name__
        if "Weights only load failed" in text:
            found = re.search(r"unsupported (?:global: )?GLOBAL ([\w.]+)", text, re.IGNORECASE)
            held = f"a pickled {found.group(1)}" if found else "pickled objects"
            raise ConfigError(
                f"{what}: refusing to load {file}: it holds {held}, not only tensors and plain "
                f"data, and unpickling it could run code. Use a .safetensors copy of these "
                f"weights, or, if you trust the file, re-save its tensors alone from your own "
                f"code (a Lightning checkpoint: torch.save(checkpoint['state_dict'], "
                f"'weights.pth'))"
            ) from None
        raise ConfigError(f"{what}: {file} is not a readable torch file ({first})") from None
