"""``vlcontrast shards inspect``: what a set of shards holds, before training on it.

Counts samples, members by extension and bytes, flags samples without an image or a caption,
histograms caption lengths (words), and draws a contact sheet PNG of images drawn evenly at
random from all the shards (a reservoir sample, seeded) with their captions. Reads the shards
with the training reader, so what it reports is what training sees.
"""

from __future__ import annotations

import io
import random
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from vlcontrast.data.captions import read_caption
from vlcontrast.data.image import IMAGE_EXTENSIONS, MAX_PIXELS, open_image, to_rgb
from vlcontrast.data.skip import SkipSample
from vlcontrast.data.sources import expand_urls, missing_shards
from vlcontrast.data.tar_reader import iter_samples


def check_image(data: bytes, max_pixels: int = MAX_PIXELS) -> None:
    """Decode ``data`` fully, as training would: :class:`SkipSample` if it cannot be used."""
    try:
        with open_image(data) as img:
            if max_pixels and img.size[0] * img.size[1] > max_pixels:
                raise SkipSample("too_large")
            to_rgb(img).load()
    except SkipSample:
        raise
    except Exception:  # noqa: BLE001 - PIL raises many types for corrupt files
        raise SkipSample("corrupt_image") from None


def inspect_shards(
    pattern: str,
    caption_key: str = "txt",
    sheet: int = 16,
    progress: bool = True,
    decode: int = 1000,
) -> dict[str, Any]:
    """Statistics of the shards of ``pattern`` and up to ``sheet`` (image, caption) pairs drawn
    uniformly from all of them, in reading order (caption "" where a sample has none). The
    images of the first ``decode`` samples (-1: all) are decoded, so corrupt ones are
    counted."""
    urls = expand_urls(pattern)
    missing = missing_shards(urls)
    members, problems, lengths = Counter(), Counter(), Counter()
    samples, size, examples, decoded, candidates = 0, 0, [], 0, 0
    rng = random.Random(0)
    for url in tqdm(urls, desc="inspect", unit="shard", disable=not progress):
        for raw in iter_samples(url, lambda reason: problems.update([reason])):
            samples += 1
            exts = [k for k in raw if not k.startswith("__")]
            members.update(exts)
            size += sum(len(raw[k]) for k in exts)
            image_key = next((k for k in IMAGE_EXTENSIONS if k in raw), None)
            if image_key is None:
                problems["missing_image"] += 1
            elif decode < 0 or decoded < decode:
                decoded += 1
                try:
                    check_image(raw[image_key])
                except SkipSample as skip:
                    problems[skip.reason] += 1
                    image_key = None
            try:
                caption = read_caption(raw, caption_key)[0]
                lengths[len(caption.split())] += 1
            except SkipSample as skip:
                problems[skip.reason] += 1
                caption = None
            if image_key and sheet > 0:  # reservoir sampling (Vitter's algorithm R)
                candidates += 1
                example = (samples, raw["__key__"], raw[image_key], caption or "")
                if len(examples) < sheet:
                    examples.append(example)
                elif (slot := rng.randrange(candidates)) < sheet:
                    examples[slot] = example
    # shards with no caption at all are image-only (``data images``), not missing captions
    image_only = samples > 0 and problems.get("missing_caption", 0) == samples
    if image_only:
        del problems["missing_caption"]
    return {
        "shards": len(urls),
        "missing_shards": len(missing),
        "image_only": image_only,
        "samples": samples,
        "decoded": decoded,
        "bytes": size,
        "members": dict(members.most_common()),
        "problems": dict(problems),
        "caption_words": dict(sorted(lengths.items())),
        "examples": [example[1:] for example in sorted(examples, key=lambda e: e[0])],
    }


def histogram_lines(lengths: dict[int, int], bins: int = 10, width: int = 40) -> list[str]:
    """A text histogram of caption lengths in words."""
    if not lengths:
        return ["(no captions)"]
    low, high = min(lengths), max(lengths)
    step = max(1, -(-(high - low + 1) // bins))
    counts = Counter()
    for length, n in lengths.items():
        counts[(length - low) // step] += n
    top = max(counts.values())
    lines = []
    for b in range(max(counts) + 1):
        start = low + b * step
        bar = "#" * round(width * counts[b] / top)
        lines.append(f"{start:4d}-{start + step - 1:<4d} {counts[b]:7d} {bar}")
    return lines


def report(stats: dict[str, Any]) -> str:
    mib = stats["bytes"] / 2**20
    lines = [
        *(
            [f"warning: {stats['missing_shards']} of the {stats['shards']} shard(s) do not exist"]
            if stats.get("missing_shards")
            else []
        ),
        f"{stats['samples']} samples in {stats['shards']} shard(s), {mib:.1f} MiB",
        "members: " + ", ".join(f"{k}={v}" for k, v in stats["members"].items()),
        "problems: "
        + (", ".join(f"{k}={v}" for k, v in stats["problems"].items()) or "none")
        + f" (images of {stats['decoded']} samples decoded)",
        *(
            ["captions: none (image-only shards, for the image-only methods: simclr, dino, ...)"]
            if stats.get("image_only")
            else [
                "caption length (words):",
                *("  " + line for line in histogram_lines(stats["caption_words"])),
            ]
        ),
    ]
    return "\n".join(lines)


def contact_sheet(
    examples: list, path: str | Path, tile: int = 160, columns: int = 4, title: str = ""
) -> None:
    """A PNG grid of (key, image bytes, caption) examples, each with its key and the start of
    its caption, under an optional title line (``shards inspect --sheet``, the demo's query)."""
    label, top = 48, 22 if title else 0
    rows = max(1, -(-len(examples) // columns))
    sheet = Image.new("RGB", (columns * tile, top + rows * (tile + label)), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((4, 4), title, fill="black")
    for i, (key, data, caption) in enumerate(examples):
        x, y = (i % columns) * tile, top + (i // columns) * (tile + label)
        try:
            with Image.open(io.BytesIO(data)) as img:
                thumb = to_rgb(img)
                thumb.thumbnail((tile, tile))
                sheet.paste(thumb, (x + (tile - thumb.width) // 2, y + (tile - thumb.height) // 2))
        except Exception:  # noqa: BLE001 - a corrupt image leaves its tile empty
            draw.text((x + 4, y + tile // 2), "(unreadable)", fill="red")
        text = textwrap.wrap(f"{key}: {caption}", width=tile // 6)[:3]
        draw.multiline_text((x + 2, y + tile + 1), "\n".join(text), fill="black", spacing=1)
    sheet.save(path)
