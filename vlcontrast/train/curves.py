"""A run's curves as one PNG (``{output_dir}/curves.png``, written when training ends): the
training loss, the learning rate and every logged evaluation metric against the step, one panel
each, read from ``metrics.jsonl``. Drawn with PIL, so no plotting library is needed."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from vlcontrast.train.metrics_log import read_jsonl

WIDTH, PANEL, LEFT, TOP = 640, 180, 70, 26
HEADLINE = ("train/loss", "train/lr")
EVAL_SKIP = ("/n", "/chance", "/images", "/captions", "/mean_rank", "/weight_decay")


def series(rows: list[dict]) -> dict[str, list[tuple[float, float]]]:
    """``{metric: [(step, value), ...]}``: the loss, the learning rate and the eval scalars."""
    out: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        for name, value in row.items():
            wanted = name in HEADLINE or (name.startswith("eval/") and not name.endswith(EVAL_SKIP))
            if wanted and isinstance(value, (int, float)):
                out.setdefault(name, []).append((row["step"], float(value)))
    return out


def draw_panel(draw: ImageDraw.ImageDraw, top: int, name: str, points, last_step: float) -> None:
    x0, x1, y0, y1 = LEFT, WIDTH - 16, top + TOP, top + PANEL - 24
    values = [v for _, v in points]
    low, high = min(values), max(values)
    if high == low:
        low, high = low - 0.5, high + 0.5
    draw.text((8, top + 6), f"{name}  (last {values[-1]:.4g})", fill="black")
    draw.rectangle([x0, y0, x1, y1], outline="gray")
    for value, y in ((high, y0), (low, y1)):
        draw.text((4, y - 6), f"{value:.3g}", fill="dimgray")
    draw.text((x0, y1 + 4), "0", fill="dimgray")
    draw.text((x1 - 60, y1 + 4), f"step {last_step:g}", fill="dimgray")

    def at(step: float, value: float) -> tuple[float, float]:
        x = x0 + (x1 - x0) * step / max(last_step, 1)
        return x, y1 - (y1 - y0) * (value - low) / (high - low)

    line = [at(s, v) for s, v in points]
    if len(line) > 1:
        draw.line(line, fill=(8, 48, 107), width=2)
    for x, y in line if len(line) < 40 else line[-1:]:
        draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(8, 48, 107))


def draw_curves(run_dir: str | Path) -> Path | None:
    """Write ``run_dir/curves.png``; None when nothing was logged yet."""
    run_dir = Path(run_dir)
    curves = series(read_jsonl(run_dir / "metrics.jsonl"))
    if not curves:
        return None
    last = max(step for points in curves.values() for step, _ in points)
    names = [n for n in HEADLINE if n in curves] + sorted(n for n in curves if n not in HEADLINE)
    image = Image.new("RGB", (WIDTH, PANEL * len(names) + 8), "white")
    draw = ImageDraw.Draw(image)
    for i, name in enumerate(names):
        draw_panel(draw, i * PANEL, name, curves[name], last)
    path = run_dir / "curves.png"
    image.save(path)
    return path
