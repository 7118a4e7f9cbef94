"""Prompt templates for zero-shot classification: built-in sets and user files.

``openai_imagenet`` is the set of 80 templates the CLIP authors used for ImageNet (Radford et al.
2021, the "Prompt Engineering for ImageNet" notebook of openai/CLIP). ``generic`` is a short,
domain-neutral set for datasets that are not natural photographs of objects. A template holds one
``{}`` where the class name goes.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

OPENAI_IMAGENET = [
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
]

GENERIC = [
    "a photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a close-up photo of a {}.",
    "a photo of the {}.",
    "{}.",
]

BUILTIN = {"openai_imagenet": OPENAI_IMAGENET, "generic": GENERIC}


def resolve_templates(entries: list[str], fallback: list[str] | None = None) -> list[str]:
    """Expand ``entries`` into templates: a built-in set name, a file (JSON list, or one template
    per line), or a literal template with ``{}``. Empty: ``fallback``, else the generic set."""
    templates: list[str] = []
    for entry in entries:
        if entry in BUILTIN:
            templates.extend(BUILTIN[entry])
        elif "{}" in entry:
            templates.append(entry)
        elif Path(entry).is_file():
            templates.extend(read_templates(Path(entry)))
        else:
            raise ValueError(
                f"templates: {entry!r} is neither a built-in set ({', '.join(BUILTIN)}), "
                f"a file, nor a template with {{}}"
            )
    templates = templates or list(fallback or GENERIC)
    for template in templates:
        check_template(template)
    return templates


def check_template(template: str) -> None:
    """A template has exactly the class name's ``{}`` and no other field (``{foo}``, ``{0}``
    or a stray brace would fail at format time, after everything was embedded)."""
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as err:
        raise ValueError(f"templates: {template!r} is not a valid template ({err})") from None
    if "" not in fields:
        raise ValueError(f"templates: {template!r} has no {{}} for the class name")
    other = [name for name in fields if name != ""]
    if other:
        raise ValueError(
            f"templates: {template!r} has a field {{{other[0]}}}; only {{}} (the class name) is "
            f"filled, write a literal brace as {{{{ or }}}}"
        )


def read_templates(path: Path) -> list[str]:
    text = path.read_text()
    if path.suffix == ".json":
        values = json.loads(text)
        return list(values["templates"] if isinstance(values, dict) else values)
    return [line.strip() for line in text.splitlines() if line.strip()]
