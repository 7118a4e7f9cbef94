"""``vlcontrast checkpoint convert CKPT --trust-pickled-metadata``: the one way a sharded
checkpoint of the earlier format is read. That format is ``torch.distributed.checkpoint``'s:
its ``.metadata`` is a pickle, and its load planner reads items declared as bytes with
a full, unrestricted ``torch.load``; either can run code planted by whoever wrote the file. So
nothing else in vlcontrast reads it (``models/sharded_weights.py`` refuses it with this
command), and this reads it only when the user says, by the flag, that they trust the file;
it then writes the checkpoint once in the single-file layout (safetensors and JSON), which
every tool reads safely from then on.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from vlcontrast.models.sharded_weights import LEGACY_METADATA, MODEL, OPTIM, SHARDS
from vlcontrast.schema import ConfigError
from vlcontrast.train.consolidate import write_single


def convert(path: str | Path, trusted: bool, out: str | Path | None = None) -> Path:
    """Rewrite ``path`` (earlier sharded format) as single files at ``out`` (default: in place);
    refused unless ``trusted``."""
    path = Path(path)
    metadata = path / SHARDS / LEGACY_METADATA
    if not metadata.is_file():
        raise ConfigError(f"checkpoint convert: {path} is not in the earlier sharded format")
    if not trusted:
        raise ConfigError(
            f"checkpoint convert: {metadata} is a pickle, and reading it runs whatever code it "
            f"holds. Only if you trust where this checkpoint came from, pass "
            f"--trust-pickled-metadata"
        )
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    reader = dcp.FileSystemReader(str(path / SHARDS))
    entries = reader.read_metadata().state_dict_metadata  # trusted by the user, above
    tensors = {
        key: torch.empty(meta.size, dtype=meta.properties.dtype)
        for key, meta in entries.items()
        if isinstance(meta, TensorStorageMetadata)
    }
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is .*single process")
        dcp.load(tensors, storage_reader=reader, no_dist=True)
    weights = {k[len(MODEL) :]: v for k, v in tensors.items() if k.startswith(MODEL)}
    optim = {k[len(OPTIM) :]: v for k, v in tensors.items() if k.startswith(OPTIM)}
    return write_single(path, out, weights, optim)
