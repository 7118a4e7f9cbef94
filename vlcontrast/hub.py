"""Names that may be Hugging Face hub repositories, checked before any download is tried.

``transformers`` retries an unreachable hub five times with back-off (about 50 s on a machine
without internet) before it says so, and tries a misspelt local folder (``text.tokenizer=toks``
beside ``tok/``) as a hub name. :func:`check_source` answers at once instead: a value that looks
like a path (``./x``, ``/x``, ``~/x``, ``x.json``) or that names a folder next to an existing one
of a similar name is treated as a missing local path; a hub name is looked up only when the hub
answers a 3-second connection (or offline mode is on, when the local cache decides).
"""

from __future__ import annotations

import difflib
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from vlcontrast.schema import ConfigError

_REACHABLE: dict[str, bool] = {}


def looks_local(value: str) -> bool:
    return value.startswith((".", "/", "~")) or value.endswith((".json", ".safetensors"))


def near_misses(value: str) -> list[str]:
    """Existing files or folders whose names are close to ``value``'s last part."""
    path = Path(value).expanduser()
    parent = path.parent if str(path.parent) else Path(".")
    try:
        names = [p.name for p in parent.iterdir()]
    except OSError:
        return []
    close = difflib.get_close_matches(path.name, names, n=3, cutoff=0.6)
    return [str(parent / name) if str(path.parent) != "." else name for name in close]


def hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return True  # offline mode: transformers reads the cache itself, without retries
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or 443
    if host not in _REACHABLE:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            _REACHABLE[host] = True
        except OSError:
            _REACHABLE[host] = False
    return _REACHABLE[host]


def check_source(key: str, value: str, what: str) -> None:
    """Raise one clear ``ConfigError`` naming ``key`` unless ``value`` is an existing path or
    a hub name that can be looked up now. ``what``: what a local value should be."""
    if Path(value).expanduser().exists():
        return
    close = near_misses(value)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    if looks_local(value) or close:
        raise ConfigError(f"{key}: {value} does not exist (expected {what} or a hub name){hint}")
    if not hub_reachable():
        raise ConfigError(
            f"{key}: {value} is not a local path and the Hugging Face hub cannot be reached "
            f"(offline?); give {what} on disk, or set HF_HUB_OFFLINE=1 to use the local cache"
        )
