"""Earlier layouts of the run config, read into today's: renamed keys (``loss.*`` ->
``objective.*``), head settings that lived under ``model.*`` before each method owned its
heads, and the single zero-shot set of configs saved before ``eval.evaluators``. ``config.py``
applies them while it reads a run file, a command line or a saved config, so old files and
checkpoints load unchanged."""

from __future__ import annotations

from typing import Any

from vlcontrast.schema import set_value

# Keys renamed since earlier versions: old run files, command lines and checkpoints still load.
RENAMED = {"loss.name": "objective.name"}
RENAMED.update(
    {f"loss.{k}": f"objective.clip.{k}" for k in ("gather", "tiled", "tiled_from", "tile_size")}
)


def renamed(path: list[str]) -> list[str]:
    dotted = ".".join(path)
    for old, new in RENAMED.items():
        if dotted == old or dotted.startswith(old + "."):
            return (new + dotted[len(old) :]).split(".")
    return path


# Method settings that lived under ``model.*`` before each method owned its heads: kept aside
# while a config is read, then moved into the objective's own settings (place_moved)
MOVED_TO_OBJECTIVE = ("proj_bn", "predictor_hidden", "ssl_head_hidden", "ssl_head_dim")
# ... and the keys that shaped an image-only model's projection head (its projector now)
PROJECTOR_SHAPE = {"embed_dim": "dim", "proj_layers": "layers", "proj_hidden": "hidden"}


def place_moved(cfg: Any, old_layout: bool = True) -> None:
    """The moved ``model.*`` head settings of an older run file, command line or checkpoint
    config, written into the objective's heads so that the same heads are built: an image-only
    model's projection (``model.embed_dim``, ``proj_layers``, ``proj_hidden``, ``proj_bn``)
    becomes ``objective.<name>.projector``, ``model.predictor_hidden`` its predictor (2 layers
    with batch norm), ``model.ssl_head_*`` SLIP's head (3 layers with batch norm)."""
    moved = cfg.__dict__.pop("_moved", {})
    if not old_layout:
        moved = {k: v for k, v in moved.items() if k in MOVED_TO_OBJECTIVE}
    settings = getattr(cfg.objective, cfg.objective.name, None)
    if not moved or settings is None:
        return
    prefix = f"objective.{cfg.objective.name}"
    shape = {k: v for k, v in moved.items() if k in PROJECTOR_SHAPE or k == "proj_bn"}
    if cfg.model.kind == "image" and shape and hasattr(settings, "projector"):
        earlier = {"embed_dim": 512, "proj_layers": 1, "proj_hidden": 0}  # that layout's defaults
        for old, new in PROJECTOR_SHAPE.items():
            value = shape.get(old, earlier[old])
            set_value(settings.projector, [new], value, f"{prefix}.projector.")
        set_value(settings.projector, ["bn"], shape.get("proj_bn", False), f"{prefix}.projector.")
        settings.projector.out_norm = "none"  # the heads of that layout had no output norm
    hidden = moved.get("predictor_hidden")
    if hidden not in (None, 0, "0") and hasattr(settings, "predictor"):
        set_value(settings.predictor, ["hidden"], hidden, f"{prefix}.predictor.")
        settings.predictor.layers, settings.predictor.dim = 2, 0
        settings.predictor.bn, settings.predictor.out_norm = True, "none"
    if cfg.objective.name == "slip" and {"ssl_head_hidden", "ssl_head_dim"} & set(moved):
        ssl = settings.head
        for old, new in (("ssl_head_hidden", "hidden"), ("ssl_head_dim", "dim")):
            if old in moved:
                set_value(ssl, [new], moved[old], f"{prefix}.head.")
        ssl.layers, ssl.bn, ssl.out_norm = 3, True, "none"


def migrate_evaluators(values: dict[str, Any]) -> dict[str, Any]:
    """Configs saved before ``eval.evaluators`` (checkpoints of earlier versions) held one
    zero-shot set as ``eval.zeroshot_shards`` + ``classes`` + ``templates``."""
    section = dict(values.get("eval") or {})
    shards = section.pop("zeroshot_shards", None)
    old = {"classes": section.pop("classes", ""), "templates": section.pop("templates", [])}
    if shards is None:
        return values
    if shards:
        entry = {"kind": "zeroshot", "data": shards, **{k: v for k, v in old.items() if v}}
        section["evaluators"] = [entry]
    return {**values, "eval": section}
