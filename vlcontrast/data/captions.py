"""The one caption and label parser: a sample's member (``txt``) or JSON field (``json.caption``,
nested as ``json.meta.caption``) -> a list of captions or a class index, or a counted
:class:`SkipSample`.

Used by the training decoder, the evaluation/search collections and the shard tools, so they
agree on every key. A JSON list (in a JSON field, or a text member that holds one) gives several
captions; training picks one per sample (seeded by position), retrieval embeds them all.
"""

from __future__ import annotations

import json
from typing import Any

from vlcontrast.data.skip import SkipSample

# A caption is cut to this many characters before anyone tokenizes it. A fast tokenizer reads the
# whole text before truncating to the context (about 1.3 s a megabyte on one core, measured:
# a 500 MB caption in a stranger's shard would stall a loader worker for ten minutes), and no
# text tower's context (512 tokens at most here, a BPE token a few characters) reaches this far,
# so no token the model sees changes.
MAX_CAPTION_CHARS = 1 << 16


def member_value(raw: dict[str, Any], key: str, what: str = "caption") -> Any:
    """The value under ``key`` of a raw tar sample: ``EXT`` gives the member's text,
    ``EXT.FIELD[.FIELD]`` a field of the member parsed as JSON. ``what`` (caption or label)
    names the skip reasons: ``missing_{what}``, ``bad_caption_encoding``/``bad_label`` (not
    UTF-8), ``bad_json``."""
    missing = f"missing_{what}"
    member, _, path = key.partition(".")
    if member not in raw:
        raise SkipSample(missing)
    data = raw[member]
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else str(data)
    except UnicodeDecodeError:
        raise SkipSample("bad_caption_encoding" if what == "caption" else "bad_label") from None
    if not path:
        return text
    try:
        value: Any = json.loads(text)
    except ValueError:
        raise SkipSample("bad_json") from None
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            raise SkipSample(missing)
        value = value[part]
    return value


def parse_captions(value: Any) -> list[str]:
    """A caption value (a string, a JSON list in a string, or a list) -> non-empty captions."""
    if value is None:
        raise SkipSample("missing_caption")
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise SkipSample("bad_caption_encoding") from None
    if isinstance(value, str):
        text = value.strip()
        value = [text]
        if text.startswith("["):  # a JSON list in a text member
            try:
                parsed = json.loads(text)
                value = parsed if isinstance(parsed, list) else value
            except ValueError:
                pass
    elif not isinstance(value, list):
        value = [value]
    captions = [c.strip()[:MAX_CAPTION_CHARS] for c in value if isinstance(c, str) and c.strip()]
    if not captions:
        raise SkipSample("empty_caption")
    return captions


def parse_label(value: Any) -> int:
    """A label value (an int, ``"7"``, ``b"7\\n"``, a JSON number) -> the class index, or a
    counted skip (``missing_label``, ``bad_label``): the one label parser of training,
    evaluation and search."""
    if value is None:
        raise SkipSample("missing_label")
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise SkipSample("bad_label") from None
    try:
        number = json.loads(value) if isinstance(value, str) else value
        if isinstance(number, bool) or int(number) != number:
            raise ValueError(value)
        return int(number)
    except (ValueError, TypeError):
        raise SkipSample("bad_label") from None


def read_caption(raw: dict[str, Any], key: str) -> list[str]:
    """The caption(s) of a raw tar sample under ``key`` (``txt`` or ``json.FIELD[.FIELD]``)."""
    return parse_captions(member_value(raw, key))
