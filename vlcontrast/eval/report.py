"""Evaluation output for people and machines: a printed table, JSON, a confusion-matrix PNG and,
for the dense kinds, a PNG of held-out images beside their true and predicted masks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw

# Entries of a result that are working data (tensors, per-sample lists), not report material.
_INTERNAL = {"predictions", "labels", "img_emb", "keys", "examples"}


SHOWN_CLASSES = 20  # per-class rows printed; --json holds them all


def format_table(name: str, result: dict[str, Any]) -> str:
    rows = [f"{name}"]
    for key, value in result["metrics"].items():
        shown = _number(value)
        rows.append(f"  {key:<32} {shown:>10}")
    per_class = result.get("per_class_iou") or {}
    if per_class:  # the dense kinds: the classes a mean IoU hides, worst first
        worst = sorted(per_class.items(), key=lambda item: item[1])
        shown = worst if len(worst) <= SHOWN_CLASSES else worst[:SHOWN_CLASSES]
        more = "" if len(worst) == len(shown) else f" ({len(shown)} lowest of {len(worst)})"
        rows.append(f"  IoU per class{more}:")
        rows.extend(f"    {name[:30]:<30} {_number(value):>10}" for name, value in shown)
    if result.get("skipped"):
        counts = ", ".join(f"{k}={v}" for k, v in sorted(result["skipped"].items()))
        rows.append(f"  skipped: {counts}")
    return "\n".join(rows)


def _number(value: float | int) -> str:
    if isinstance(value, int):
        return f"{value:d}"
    return f"{value:.1e}" if 0 < abs(value) < 1e-3 else f"{value:.4f}"


def to_json(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        name: {k: v for k, v in result.items() if k not in _INTERNAL and not torch.is_tensor(v)}
        for name, result in results.items()
    }


def write_json(results: dict[str, dict[str, Any]], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(to_json(results), indent=2) + "\n")
    tmp.replace(path)


def save_confusion_png(confusion: list[list[int]], classnames: list[str], path: str | Path):
    """Row-normalised confusion matrix (row = true class; darker = more of that row), with the
    class names along both axes (columns written upwards) when the classes are few enough to
    label, the title and axis names inside the image."""
    counts = torch.tensor(confusion, dtype=torch.float)
    rates = counts / counts.sum(dim=1, keepdim=True).clamp(min=1)  # (C, C)
    n = len(classnames)
    cell = max(1, min(24, 960 // max(n, 1)))
    labelled = cell >= 10
    names = [name[:30] for name in classnames]
    text_w = 6 * max(len(c) for c in names) + 8 if labelled else 0  # PIL's default font: 6 px
    title = "confusion matrix: rows = true class, columns = predicted class"
    subtitle = "shade = share of the row (darker = more)"
    left, top = max(text_w, 14), 40 + text_w
    width = max(left + n * cell + 8, 6 * len(title) + 16)
    image = Image.new("RGB", (width, top + n * cell + 8), "white")
    draw = ImageDraw.Draw(image)
    draw.text((6, 4), title, fill="black")
    draw.text((6, 18), subtitle, fill="dimgray")
    for i in range(n):
        if labelled:
            draw.text((2, top + i * cell + (cell - 10) // 2), names[i], fill="black")
            label = Image.new("RGB", (text_w, cell), "white")  # written, then turned upwards
            ImageDraw.Draw(label).text((2, (cell - 10) // 2), names[i], fill="black")
            image.paste(label.rotate(90, expand=True), (left + i * cell, 36))
        for j in range(n):
            x, y = left + j * cell, top + i * cell
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=_shade(rates[i, j].item()))
    image.save(path)


def _shade(rate: float) -> tuple[int, int, int]:
    """White (0) to navy (1); the square root makes small confusions visible."""
    v = rate**0.5
    navy = (8, 48, 107)
    return tuple(round(255 * (1 - v) + c * v) for c in navy)


def class_colour(label: int) -> tuple[int, int, int]:
    """Pascal VOC's palette (the bits of the label spread over R, G and B): 0 black, 1 dark red,
    2 green, ...; 255 (ignored) white."""
    if label == 255:
        return (255, 255, 255)
    rgb = [0, 0, 0]
    for shift in range(8):
        for channel in range(3):
            rgb[channel] |= ((label >> channel) & 1) << (7 - shift)
        label >>= 3
    return tuple(rgb)


def save_segmentation_png(examples: dict[str, torch.Tensor], classnames: list[str], path, title):
    """One row per held-out image: the image, its true mask and the predicted one, each at
    least 96 px (nearest-neighbour enlarged), then a key of the classes shown."""
    images, masks, pred = examples["images"], examples["masks"], examples["pred"]
    size = images.shape[-1]
    scale = -(-96 // size)  # ceil: small images enlarged by a whole factor
    tile, gap, top = size * scale, 6, 36
    lut = torch.tensor([class_colour(i) for i in range(256)], dtype=torch.uint8)  # (256, 3)

    def picture(array: torch.Tensor) -> Image.Image:  # (S, S, 3) uint8
        return Image.fromarray(array.numpy()).resize((tile, tile), Image.Resampling.NEAREST)

    shown = sorted({int(v) for v in torch.cat([masks.unique(), pred.unique()]) if v < 255})
    shown = [v for v in shown if v < len(classnames)]
    key_rows = -(-len(shown) // 3)
    width = max(3 * tile + 4 * gap, 6 * len(title) + 12)
    height = top + len(images) * (tile + gap) + 14 * key_rows + gap
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((gap, 4), title, fill="black")
    for column, name in enumerate(("image", "true mask", "predicted")):
        draw.text((gap + column * (tile + gap), 20), name, fill="dimgray")
    for row, (image, mask, guess) in enumerate(zip(images, masks, pred, strict=True)):
        y = top + row * (tile + gap)
        tiles = (image.permute(1, 2, 0), lut[mask.long()], lut[guess.long().clamp(max=255)])
        for column, array in enumerate(tiles):
            sheet.paste(picture(array.contiguous()), (gap + column * (tile + gap), y))
    y0 = top + len(images) * (tile + gap)
    column_w = (width - gap) // 3
    for i, label in enumerate(shown):
        x, y = gap + (i % 3) * column_w, y0 + (i // 3) * 14
        draw.rectangle([x, y + 1, x + 10, y + 11], fill=class_colour(label), outline="gray")
        draw.text((x + 14, y), classnames[label][: column_w // 6 - 3], fill="black")
    sheet.save(path)
