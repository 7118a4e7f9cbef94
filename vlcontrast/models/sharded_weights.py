"""Reading a sharded checkpoint: the ``sharded/`` directory that ``torch.distributed.checkpoint``
writes under ``train.fsdp`` (``train/sharded_checkpoint.py``), in one process and without a
process group, so evaluation, search and export load an FSDP run's weights as they load any
checkpoint's.

The shards hold flat keys: ``model/{name}`` for the weights and ``optim/{name}/{state}`` for the
optimizer's tensors (names hold dots, never a slash). Each rank's ``__{rank}_0.distcp`` file holds
its pieces (tensors written by ``torch.save``, read back with ``weights_only=True``); the
``.metadata`` file is a plain pickle of where every piece lives. It is read here with an
unpickler that admits only torch's checkpoint-metadata classes, shapes and dtypes, so a shared
checkpoint cannot run code (``train/checkpoint.py`` keeps the same promise for its own files).
"""

from __future__ import annotations

import pickle
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from vlcontrast.schema import ConfigError

SHARDS = "sharded"  # the directory inside a checkpoint
MODEL, OPTIM = "model/", "optim/"
_METADATA_MODULES = (
    "torch.distributed.checkpoint.metadata",
    "torch.distributed.checkpoint.filesystem",
    "torch.distributed.checkpoint.planner",
)
_ALLOWED = {
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("collections", "OrderedDict"),
}
_ALLOWED |= {("pathlib", name) for name in ("Path", "PosixPath", "WindowsPath", "PurePosixPath")}


@contextmanager
def single_process_ok():
    """Silences torch's warning that, without a process group, a checkpoint is read or written
    by this process alone: that is what is meant here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is .*single process")
        yield


def is_sharded(path: str | Path) -> bool:
    return (Path(path) / SHARDS / ".metadata").is_file()


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module in _METADATA_MODULES or (module, name) in _ALLOWED:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not checkpoint metadata")


def reader(directory: str | Path):
    """A ``FileSystemReader`` of ``directory`` whose metadata passes :class:`_MetadataUnpickler`."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any):
            file = Path(self.path) / ".metadata"
            try:
                with open(file, "rb") as handle:
                    metadata = _MetadataUnpickler(handle).load()
            except pickle.UnpicklingError as err:
                raise ConfigError(
                    f"refusing to load {file}: {err}, which could run code; resume from a "
                    f"checkpoint you trust"
                ) from None
            except (OSError, EOFError, AttributeError, ValueError) as err:
                raise ConfigError(f"this checkpoint is damaged: {file} ({err})") from None
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader(str(directory))


def read_tensors(path: str | Path, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every full tensor of a sharded checkpoint whose key starts with ``prefix`` (the prefix
    dropped), on the CPU. Reads in this process alone, under torchrun or not."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    source = reader(Path(path) / SHARDS)
    entries = source.read_metadata().state_dict_metadata
    tensors = {
        key: torch.empty(meta.size, dtype=meta.properties.dtype)
        for key, meta in entries.items()
        if key.startswith(prefix) and isinstance(meta, TensorStorageMetadata)
    }
    try:
        with single_process_ok():
            dcp.load(tensors, storage_reader=source, no_dist=True)
    except (OSError, RuntimeError, EOFError, dcp.CheckpointException) as err:
        first = str(err).strip().splitlines()[-1][:300]
        raise ConfigError(f"this checkpoint is damaged: {Path(path) / SHARDS} ({first})") from None
    return {key[len(prefix) :]: value for key, value in tensors.items()}
