"""A backbone's weights from a local file into a timm trunk (``image.checkpoint_path``): timm's
own files and the released self-supervised ones as their authors saved them (DINO's
``dino_deitsmall16_pretrain.pth``, SwAV's ``swav_800ep_pretrain.pth.tar``, MoCo's and DenseCL's
checkpoints), so that ``eval knn``, ``dense-knn`` or ``linear-probe`` can score them and
training can start from them.

Read without running code: a ``.safetensors`` file, anything else through
``torch.load(weights_only=True)`` (``models/torch_format.py``); timm's ``checkpoint_path`` is
not used: the early timm 1.0 releases that ``pyproject.toml`` admits call ``torch.load``
without ``weights_only``, which before torch 2.6 unpickles anything.
Then, as the reference trainers' linear-evaluation scripts do (DINO's ``checkpoint_key``,
MoCo's ``module.encoder_q.`` filter):

- the wrapper dict is found: of the top level, ``state_dict``, ``model``, ``teacher`` and
  every dict nested in them (VISSL's model zoo keeps the trunk under
  ``classy_state_dict.base_model.model.trunk``), the one under which most tensors are the
  trunk's; on a tie the first in that order (DINO's full checkpoints keep ``teacher`` and
  ``student``; DINO evaluates the teacher);
- the key prefix is found, not listed: of every prefix the keys have up to a dot (``module.``,
  ``module.encoder_q.``, ``backbone.``, ...), the one under which most keys are the trunk's. On
  a tie (MoCo's ``encoder_q.`` and ``encoder_k.``, MoCo v3's ``base_encoder.`` and
  ``momentum_encoder.``) the one first in the file: the online encoder, which the authors
  evaluate;
- a ResNet saved as lightly's examples and benchmarks build it,
  ``nn.Sequential(*list(torchvision_resnet.children())[:-1])`` (``backbone.0.weight`` for
  ``conv1.weight``, ``backbone.4.0.conv1.weight`` for ``layer1.0.conv1.weight``), has its
  children's numbers named (``RESNET_CHILDREN``) when that matches more of the trunk's keys;
- timm's own ``checkpoint_filter_fn`` for the architecture, when it has one, adapts the rest
  (a ViT's position embeddings resampled to ``image.image_size``);
- tensors that are not the trunk's (projection heads, prototypes, a classifier) are left out
  and counted; a trunk tensor the file lacks, or one of another shape, is an error naming it.
"""

from __future__ import annotations

import argparse
import sys
from collections import deque
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlcontrast.models.torch_format import load_tensors_only
from vlcontrast.schema import ConfigError

WHAT = "image.checkpoint_path"
WRAPPERS = ("state_dict", "model", "teacher")  # timm/MoCo/DenseCL, DeiT/MAE, DINO full ckpt
# Prefixes tried: up to 4 levels (``_orig_mod.module.encoder_q.`` is 3) in a key's first 256
# characters, so a file with absurd keys costs no more than a real one
MAX_DEPTH, MAX_PREFIX = 4, 256
# torchvision's ResNet children by position (2 relu, 3 maxpool, 8 avgpool and 9 fc hold no
# tensors): the names of a ResNet kept as nn.Sequential(*children()[:-1]), lightly's layout
RESNET_CHILDREN = {
    "0": "conv1",
    "1": "bn1",
    "4": "layer1",
    "5": "layer2",
    "6": "layer3",
    "7": "layer4",
}


def read_tensors(file: str | Path, what: str = WHAT) -> dict[str, Any]:
    """The file's top-level dict: safetensors, else a tensors-only torch load (``what``: the
    option or command named in errors)."""
    file = Path(file)
    if not file.is_file():
        raise ConfigError(f"{what}: no file {file}")
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(file))
        except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
            raise ConfigError(
                f"{what}: {file} is not a readable safetensors file ({err})"
            ) from None
    # DINO's full checkpoints (and many trainers') keep their command line as an
    # argparse.Namespace: an attribute bag, rebuilt without calling code, whose values the
    # tensors-only unpickler still checks
    state = load_tensors_only(file, what, [argparse.Namespace])
    if not isinstance(state, dict):
        raise ConfigError(f"{what}: {file} holds a {type(state).__name__}, not a dict of tensors")
    return state


def tensors_of(inner: Any) -> dict[str, torch.Tensor]:
    """The tensor entries of ``inner`` if it is a dict, else none."""
    if not isinstance(inner, dict):
        return {}
    return {k: v for k, v in inner.items() if isinstance(v, torch.Tensor)}


def wrappers(state: dict[str, Any]) -> list[tuple[dict[str, torch.Tensor], str]]:
    """Every dict of ``state`` that holds tensors, with its path ('' for the top level): the
    top level and ``WRAPPERS`` first, then the nested dicts shallowest first in the file's
    order (VISSL's ``classy_state_dict.base_model.model.trunk``), at most ``MAX_DEPTH + 2``
    levels down and 10,000 dicts opened, however the file nests."""
    found = [(tensors_of(state if not key else state.get(key)), key) for key in ("", *WRAPPERS)]
    queue, opened = deque([(state, "")]), 0
    while queue and opened < 10_000:
        inner, path = queue.popleft()
        opened += 1
        if path and path not in WRAPPERS:
            found.append((tensors_of(inner), path))
        if path.count(".") < MAX_DEPTH + 1:
            queue.extend(
                (v, f"{path}.{k}".lstrip(".")) for k, v in inner.items() if isinstance(v, dict)
            )
    return [(tensors, path) for tensors, path in found if tensors]


def best_prefix(keys: list[str], wanted: set[str]) -> str:
    """The prefix (up to a dot, or '') under which most ``keys`` are in ``wanted``; on a tie,
    the one that appears first in ``keys``' order."""
    counts: dict[str, int] = {}  # in order of first appearance
    for key in keys:
        ends = [i + 1 for i, char in enumerate(key[:MAX_PREFIX]) if char == "."]
        for prefix in ["", *(key[:end] for end in ends[:MAX_DEPTH])]:
            counts[prefix] = counts.get(prefix, 0) + (key[len(prefix) :] in wanted)
    return max(counts, key=counts.__getitem__)  # max keeps the first of equals


def named_children(key: str) -> str:
    """``key`` with its first numeric part named as a torchvision ResNet's child
    (``backbone.4.0.conv1.weight`` -> ``backbone.layer1.0.conv1.weight``)."""
    parts = key.split(".")
    first = next((i for i, part in enumerate(parts) if part.isdigit()), None)
    if first is None or parts[first] not in RESNET_CHILDREN:
        return key
    return ".".join([*parts[:first], RESNET_CHILDREN[parts[first]], *parts[first + 1 :]])


def matched(state: dict[str, torch.Tensor], wanted: set[str]) -> dict[str, Any]:
    """``state`` under its best prefix (:func:`best_prefix`), with that prefix and its layout:
    the file's own names or, if they match more of ``wanted``, lightly's ResNet layout named
    (:func:`named_children`, layout ``sequential_resnet``)."""
    best: dict[str, Any] = {"hits": -1}
    renamed = {named_children(k): v for k, v in state.items()}
    for layout, names in (("", state), ("sequential_resnet", renamed)):
        prefix = best_prefix(list(names), wanted)
        found = {k[len(prefix) :]: v for k, v in names.items() if k.startswith(prefix)}
        hits = sum(k in wanted for k in found)
        if hits > best["hits"]:
            best = {"state": found, "prefix": prefix, "layout": layout, "hits": hits}
    return best


def trunk_state(state: dict[str, torch.Tensor], trunk: nn.Module) -> dict[str, Any]:
    """``state`` as the trunk's keys: prefix stripped, timm's filter applied; the tensors that
    are not the trunk's left out (returned under ``left_out``)."""
    wanted = trunk.state_dict()
    found = matched(state, set(wanted))
    state, prefix = found["state"], found["prefix"]
    adapt = getattr(sys.modules.get(type(trunk).__module__), "checkpoint_filter_fn", None)
    if adapt is not None:
        try:
            state = adapt(state, trunk)
        except Exception:  # noqa: BLE001 - a filter for another layout; keys are checked below
            pass
    kept = {k: v for k, v in state.items() if k in wanted}
    left_out = sorted(set(state) - set(kept))
    return {"state": kept, "prefix": prefix, "layout": found["layout"], "left_out": left_out}


def load_backbone(
    trunk: nn.Module, file: str | Path, model_name: str = "", what: str = WHAT
) -> dict[str, Any]:
    """Load ``file`` into ``trunk`` (see the module): every trunk tensor present and of its
    shape, else a ConfigError naming one. Returns the wrapper, the prefix, the number of
    tensors loaded and the keys left out."""
    candidates = wrappers(read_tensors(file, what))
    if not candidates:
        raise ConfigError(f"{what}: {file} holds no tensors, at the top level or in any dict")
    wanted = trunk.state_dict()
    # the wrapper under which most tensors are the trunk's; on a tie the first (DINO's teacher)
    hits = [matched(tensors, set(wanted))["hits"] for tensors, _ in candidates]
    tensors, wrapper = candidates[hits.index(max(hits))]
    found = trunk_state(tensors, trunk)
    for key, value in found["state"].items():
        if value.shape != wanted[key].shape:
            raise ConfigError(
                f"{what}: {file}'s {key} is {tuple(value.shape)}, image.model {model_name!r} "
                f"has {tuple(wanted[key].shape)}: the weights are of another architecture or size"
            )
    missing = [k for k in wanted if k not in found["state"] and "num_batches_tracked" not in k]
    if missing:
        raise ConfigError(
            f"{what}: {file} lacks {len(missing)} of image.model {model_name!r}'s "
            f"{len(wanted)} tensors ({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''}"
            f"): set image.model (and image.model_kwargs) to the architecture the file holds"
        )
    trunk.load_state_dict(found["state"], strict=False)
    return {"wrapper": wrapper, "loaded": len(found["state"])} | {
        k: v for k, v in found.items() if k != "state"
    }


def describe(report: dict[str, Any], file: str | Path, what: str = WHAT) -> str:
    """One line: what :func:`load_backbone` took from ``file`` and what it left out."""
    where = f" under {report['wrapper']!r}" if report["wrapper"] else ""
    prefix = f", prefix {report['prefix']!r} removed" if report["prefix"] else ""
    if report.get("layout") == "sequential_resnet":
        prefix += ", a ResNet's nn.Sequential children named (lightly's layout)"
    left = report["left_out"]
    shown = ", ".join(left[:3]) + (", ..." if len(left) > 3 else "")
    extra = f"; left out {len(left)} not in the backbone ({shown})" if left else ""
    return f"{what}: {report['loaded']} tensors from {file}{where}{prefix}{extra}"
