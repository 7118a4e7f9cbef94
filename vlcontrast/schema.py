"""The building blocks of the typed config schema, shared by ``config`` and the components that
declare their own settings next to their code (each objective's dataclass).

A field's checks are declared with the field, as dataclass metadata: ``choices(...)`` for a fixed
set of strings, ``POSITIVE``/``NON_NEGATIVE`` for numbers, ``RANGE(lo, hi)`` for a closed
interval. ``config`` enforces them whenever a value is set, naming the key.
"""

from __future__ import annotations

from typing import Any


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
