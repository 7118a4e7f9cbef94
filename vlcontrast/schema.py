"""The building blocks of the typed config schema, shared by ``config`` and the components that
declare their own settings next to their code (each objective's dataclass).

It also holds the machinery that sets a dotted key on a dataclass tree: values are coerced to the
field's type (``list[X]`` element by element, dataclass items key by key), checked, and named in
every error; and the reasons ``vlcontrast config --keys`` prints, read from the schema's comments.

A field's checks are declared with the field, as dataclass metadata: ``choices(...)`` for a fixed
set of strings, ``POSITIVE``/``NON_NEGATIVE`` for numbers, ``RANGE(lo, hi)`` for a closed
interval. ``config`` enforces them whenever a value is set, naming the key.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config key is unknown, mistyped or out of range. The message names the key."""


def choices(*values: str) -> dict[str, Any]:
    return {"choices": values}


POSITIVE: dict[str, Any] = {"check": "positive"}  # value > 0
NON_NEGATIVE: dict[str, Any] = {"check": "non_negative"}  # value >= 0


def between(low: float, high: float, high_open: bool = False) -> dict[str, Any]:
    """low <= value <= high (value < high with ``high_open``)."""
    return {"check": "range", "range": (low, high), "high_open": high_open}


def check_value(key: str, metadata: Any, value: Any) -> None:
    """Raise :class:`ConfigError` naming ``key`` when ``value`` breaks its declared check."""
    allowed = metadata.get("choices")
    if allowed and value not in allowed:
        raise ConfigError(f"{key}: expected one of {', '.join(allowed)}, got {value!r}")
    check = metadata.get("check")
    if check is None or value is None:
        return
    if check == "positive" and not value > 0:
        raise ConfigError(f"{key}: expected a positive number, got {value!r}")
    if check == "non_negative" and not value >= 0:
        raise ConfigError(f"{key}: expected a number >= 0, got {value!r}")
    if check == "range":
        low, high = metadata["range"]
        inside = low <= value < high if metadata.get("high_open") else low <= value <= high
        if not inside:
            bracket = ")" if metadata.get("high_open") else "]"
            raise ConfigError(f"{key}: expected a number in [{low}, {high}{bracket}, got {value!r}")


def optional_of(typ: Any) -> Any:
    """``X`` for ``X | None``, else None."""
    if typing.get_origin(typ) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(typ)) == 2:
            return args[0]
    return None


def list_item_type(typ: Any) -> Any:
    """``X`` for ``list[X]``; ``None`` for a bare ``list``."""
    args = typing.get_args(typ) if typing.get_origin(typ) is list else ()
    return args[0] if args else None


def coerce(key: str, value: Any, typ: Any) -> Any:
    """Convert ``value`` to ``typ`` or raise a ConfigError that names ``key``. ``list[X]``
    fields are converted element by element (``key[i]``); dataclass elements key by key."""
    optional = optional_of(typ)
    if optional is not None:
        if value is None or (isinstance(value, str) and value.lower() in {"none", "null"}):
            return None
        return coerce(key, value, optional)
    if typing.get_origin(typ) is list or typ is list:
        return coerce_list(key, value, list_item_type(typ))
    if dataclasses.is_dataclass(typ):
        return make_item(key, typ, value)
    expected = getattr(typ, "__name__", str(typ))
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "false", "1", "0", "yes", "no"}:
            return value.lower() in {"true", "1", "yes"}
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif typ is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            if not math.isfinite(number) or abs(number) > 1e30:
                raise ConfigError(f"{key}: expected a finite number, got {value!r}")
            return number
    elif typ is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    elif typ is dict:
        value = parse_yaml(value)
        if isinstance(value, dict):
            return value
    raise ConfigError(f"{key}: expected {expected}, got {value!r} ({type(value).__name__})")


def parse_yaml(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return yaml.safe_load(value)
        except yaml.YAMLError:
            pass
    return value


def coerce_list(key: str, value: Any, item_type: Any) -> list:
    value = parse_yaml(value)
    if isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, list):
        kind = f"list[{getattr(item_type, '__name__', item_type)}]" if item_type else "list"
        raise ConfigError(f"{key}: expected {kind}, got {value!r} ({type(value).__name__})")
    if item_type is None:
        return value
    return [coerce(f"{key}[{i}]", item, item_type) for i, item in enumerate(value)]


def fields_of(cls: type) -> dict[str, tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(cls)
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(cls)}


def set_value(obj: Any, path: list[str], value: Any, prefix: str = "") -> None:
    name, rest = path[0], path[1:]
    key = f"{prefix}{name}"
    fields = fields_of(type(obj))
    if name not in fields:
        valid = ", ".join(f"{prefix}{n}" for n in fields)
        raise ConfigError(f"unknown config key '{key}'; valid keys here: {valid}")
    f, typ = fields[name]
    if dataclasses.is_dataclass(typ):
        if rest:
            set_value(getattr(obj, name), rest, value, prefix=f"{key}.")
            return
        if isinstance(value, str):  # the command line's section={key: value, ...}: key by key
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError:
                pass
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {typ.__name__} keys, got {value!r}")
        for sub, sub_value in value.items():
            set_value(getattr(obj, name), [str(sub)], sub_value, prefix=f"{key}.")
        return
    if typ is dict and not rest:
        setattr(obj, name, merged_mapping(key, getattr(obj, name), value))
        return
    if rest:
        if typ is dict:  # model_kwargs.depth=2 sets one entry of a free-form dict
            entry = getattr(obj, name)
            for part in rest[:-1]:
                entry = entry.setdefault(part, {})
            entry[rest[-1]] = yaml.safe_load(value) if isinstance(value, str) else value
            return
        raise ConfigError(f"unknown config key '{key}.{'.'.join(rest)}': {key} has no sub-keys")
    value = coerce(key, value, typ)
    check_value(key, f.metadata, value)
    setattr(obj, name, value)


def merged_mapping(key: str, current: dict, value: Any) -> dict:
    """A free-form mapping (``image.model_kwargs``, ``text.config``) given over an earlier one (a
    preset's) merges key by key, as the dotted form ``image.model_kwargs.depth=2`` does; an
    empty mapping, or one naming another ``model_type``, replaces it."""
    if isinstance(value, str):
        try:
            value = yaml.safe_load(value) if value.strip() else {}
        except yaml.YAMLError:
            pass
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a mapping, got {value!r}")
    same_kind = value.get("model_type", current.get("model_type")) == current.get("model_type")
    if not value or not same_kind:
        return dict(value)
    out = dict(current)
    for sub, sub_value in value.items():
        if isinstance(sub_value, dict) and isinstance(out.get(sub), dict):
            out[sub] = merged_mapping(f"{key}.{sub}", out[sub], sub_value)
        else:
            out[sub] = sub_value
    return out


def make_item(key: str, cls: type, value: Any) -> Any:
    """A list entry of dataclass ``cls`` from a mapping, checked key by key."""
    if isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a mapping of {cls.__name__} keys, got {value!r}")
    item = cls()
    for sub, sub_value in value.items():
        set_value(item, [str(sub)], sub_value, prefix=f"{key}.")
    return item


def describe(prefix: str, cls: type, instance: Any = None) -> list[str]:
    """One line per key of ``cls``: type, default and reason; a nested section's defaults are
    those of ``instance`` (the enclosing default, e.g. SimCLR's projector, not HeadConfig's)."""
    out = []
    reasons = field_comments(cls)
    instance = instance if instance is not None else cls()
    for name, (f, typ) in fields_of(cls).items():
        default = getattr(instance, name)
        if dataclasses.is_dataclass(typ):
            out.extend(describe(f"{prefix}{name}.", typ, default))
            continue
        item = list_item_type(typ)
        kind = typ.__name__ if isinstance(typ, type) else str(typ).replace("typing.", "")
        if dataclasses.is_dataclass(item):
            kind = f"list[{item.__name__}]"
        reason = f.metadata.get("help") or reasons.get(name, "")
        out.append(
            f"{prefix}{name} ({kind}, default {default!r})" + (f": {reason}" if reason else "")
        )
        if dataclasses.is_dataclass(item):
            out.extend(describe(f"{prefix}{name}[i].", item))
    return out


def field_comments(cls: type) -> dict[str, str]:
    """Each field's comment in the schema's source (the lines just above it and the one at its
    end), as one line: the reason ``vlcontrast config --keys`` prints beside the default."""
    import inspect
    import re

    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return {}
    comments: dict[str, str] = {}
    pending: list[str] = []
    for line in lines:
        text = line.strip()
        if text.startswith("#"):
            pending.append(text.lstrip("# ").strip())
            continue
        match = re.match(r"^    (\w+): ", line)
        if match:
            trailing = line.split("  # ", 1)[1].strip() if "  # " in line else ""
            comments[match.group(1)] = " ".join([*pending, trailing]).strip()
        if match or not text:
            pending = []
    return comments
