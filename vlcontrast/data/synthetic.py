"""The embedded default corpus: coloured shapes with captions, generated locally.

Every image shows one shape of a given colour, size and position on a noisy background; its
caption names the colour and shape and, at random, the size and the position ("a small red
triangle at the top left"). Classes for zero-shot evaluation are colour x shape (30 classes);
held-out images come from a different seed. A word-level tokenizer is trained on the captions
with ``tokenizers``, so nothing is downloaded.
"""

from __future__ import annotations

import io
import json
import math
import random
from pathlib import Path

from PIL import Image, ImageDraw

from vlcontrast.data.shard_writer import write_shards
from vlcontrast.data.vocab import train_tokenizer

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 190),
    "orange": (245, 140, 30),
}
SHAPES = ("circle", "square", "triangle", "star", "cross")
SIZES = {"small": 0.14, "large": 0.3}  # radius as a fraction of the image side
POSITIONS = {
    "at the top left": (0.27, 0.27),
    "at the top": (0.5, 0.27),
    "at the top right": (0.73, 0.27),
    "on the left": (0.27, 0.5),
    "in the center": (0.5, 0.5),
    "on the right": (0.73, 0.5),
    "at the bottom left": (0.27, 0.73),
    "at the bottom": (0.5, 0.73),
    "at the bottom right": (0.73, 0.73),
}
CLASSNAMES = [f"{color} {shape}" for color in COLORS for shape in SHAPES]
MASK_CLASSES = ["background", *SHAPES]  # the pixel values of a mask (eval/dense_knn.py)
TEMPLATES = ["a {}", "a small {}", "a large {}"]
# One-colour images (``one_colour=True``): every shape in one yellow on one ground tint, so only
# the shapes (class, size, place) tell images apart, not their colours (benchmarks/dense_shapes.py)
ONE_COLOUR, ONE_COLOUR_NAME, GROUND = (220, 200, 60), "yellow", (50, 50, 60)


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple]:
    if shape == "square":
        corners = [(math.pi / 4 + k * math.pi / 2) for k in range(4)]
        radii = [r * 1.1] * 4
    elif shape == "triangle":
        corners = [(-math.pi / 2 + k * 2 * math.pi / 3) for k in range(3)]
        radii = [r * 1.2] * 3
    elif shape == "star":
        corners = [(-math.pi / 2 + k * math.pi / 5) for k in range(10)]
        radii = [r * 1.2 if k % 2 == 0 else r * 0.5 for k in range(10)]
    elif shape == "cross":
        w = 0.35
        pts = [(w, 1), (w, w), (1, w), (1, -w), (w, -w), (w, -1)]
        pts += [(-x, -y) for x, y in pts]
        cos, sin = math.cos(angle), math.sin(angle)
        return [(cx + r * (x * cos - y * sin), cy + r * (x * sin + y * cos)) for x, y in pts]
    else:
        raise ValueError(shape)
    return [
        (cx + q * math.cos(a + angle), cy + q * math.sin(a + angle))
        for a, q in zip(corners, radii, strict=True)
    ]


def _background(rng: random.Random, side: int, clutter: int = 12, base=None):
    """A dark ground in a random tint (or ``base``) with ``clutter`` dots a little lighter
    (never a shape's colour)."""
    base = list(base) if base else [rng.randint(20, 90) for _ in range(3)]
    img = Image.new("RGB", (side, side), tuple(base))
    draw = ImageDraw.Draw(img)
    for _ in range(clutter):
        x, y = rng.uniform(0, side), rng.uniform(0, side)
        tint = tuple(min(255, c + rng.randint(0, 40)) for c in base)
        draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=tint)
    return img, draw


def _draw_shape(canvases, shape: str, cx: float, cy: float, r: float, angle: float) -> None:
    """Draw one shape into each ``(ImageDraw, fill)`` of ``canvases``."""
    for canvas, value in canvases:
        if shape == "circle":
            canvas.ellipse((cx - r, cy - r, cx + r, cy + r), fill=value)
        else:
            canvas.polygon(_polygon(shape, cx, cy, r, angle), fill=value)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _fill(color: str, rng: random.Random, one_colour: bool = False) -> tuple:
    rgb = ONE_COLOUR if one_colour else COLORS[color]
    return tuple(max(0, min(255, c + rng.randint(-20, 20))) for c in rgb)


def render(
    color: str,
    shape: str,
    size: str,
    position: str,
    rng: random.Random,
    side: int = 64,
    mask: Image.Image | None = None,
    one_colour: bool = False,
):
    """One RGB image of ``side`` pixels; with ``mask`` (an "L" image of the same size), the
    shape is drawn there too, as its index in ``MASK_CLASSES``. ``one_colour``: the shape in
    ``ONE_COLOUR`` on the ``GROUND`` tint, whatever ``color`` says."""
    img, draw = _background(rng, side, base=GROUND if one_colour else None)
    fx, fy = POSITIONS[position]
    jitter = 0.05 * side
    cx, cy = fx * side + rng.uniform(-jitter, jitter), fy * side + rng.uniform(-jitter, jitter)
    r = SIZES[size] * side * rng.uniform(0.85, 1.15)
    fill = _fill(color, rng, one_colour)
    angle = rng.uniform(-0.2, 0.2) if shape != "circle" else 0.0
    canvases = [(draw, fill)]
    if mask is not None:
        canvases.append((ImageDraw.Draw(mask), MASK_CLASSES.index(shape)))
    _draw_shape(canvases, shape, cx, cy, r, angle)
    return img


def render_scene(
    rng: random.Random, objects: int, side: int = 64, mask=None, one_colour: bool = False
):
    """A scene of ``objects`` shapes, each of a random class, colour and size (radius 0.1 to
    0.2 of the side) anywhere in the image, drawn in turn so a later one hides an earlier
    one, in the image and in ``mask`` alike (``one_colour``: as :func:`render`). Returns the
    image and the shapes drawn, in order (dicts of colour, shape, centre, radius and angle)."""
    img, draw = _background(rng, side, clutter=6 * objects, base=GROUND if one_colour else None)
    drawn = []
    for _ in range(objects):
        color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
        color = ONE_COLOUR_NAME if one_colour else color
        r = rng.uniform(0.1, 0.2) * side
        cx, cy = rng.uniform(r, side - r), rng.uniform(r, side - r)
        angle = rng.uniform(-0.4, 0.4) if shape != "circle" else 0.0
        canvases = [(draw, _fill(color, rng, one_colour))]
        if mask is not None:
            canvases.append((ImageDraw.Draw(mask), MASK_CLASSES.index(shape)))
        _draw_shape(canvases, shape, cx, cy, r, angle)
        drawn.append(
            {"color": color, "shape": shape, "centre": (cx, cy), "radius": r, "angle": angle}
        )
    return img, drawn


def caption(color: str, shape: str, size: str, position: str, rng: random.Random) -> str:
    words = ["a"]
    if rng.random() < 0.5:
        words.append(size)
    words += [color, shape]
    if rng.random() < 0.5:
        words.append(position)
    return " ".join(words)


def samples(n: int, seed: int, side: int = 64):
    """Yield ``n`` samples in shard layout: jpg, txt, json (attributes) and cls (class index)."""
    rng = random.Random(seed)
    for index in range(n):
        color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
        size, position = rng.choice(list(SIZES)), rng.choice(list(POSITIONS))
        buffer = io.BytesIO()
        render(color, shape, size, position, rng, side).save(buffer, format="JPEG", quality=90)
        text = caption(color, shape, size, position, rng)
        meta = {"color": color, "shape": shape, "size": size, "position": position}
        yield {
            "__key__": f"{seed:04d}{index:07d}",
            "jpg": buffer.getvalue(),
            "txt": text,
            "json": json.dumps({"caption": text, **meta}),
            "cls": str(CLASSNAMES.index(f"{color} {shape}")),
        }


def example_folder(out_dir: str | Path, n: int = 200, seed: int = 0) -> Path:
    """``n`` images as ``out_dir/images/NNNN.jpg`` and ``out_dir/captions.csv`` (image, caption,
    label): the shape of a user's own folder and captions table. Returns the table's path."""
    import csv

    images = Path(out_dir) / "images"
    images.mkdir(parents=True, exist_ok=True)
    table = Path(out_dir) / "captions.csv"
    with open(table, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption", "label"])
        for i, sample in enumerate(samples(n, seed)):
            (images / f"{i:04d}.jpg").write_bytes(sample["jpg"])
            writer.writerow([f"{i:04d}.jpg", sample["txt"], CLASSNAMES[int(sample["cls"])]])
    return table


def make_corpus(
    out_dir: str | Path, n_train: int = 12000, n_heldout: int = 1500, per_shard: int = 1000
) -> dict[str, str]:
    """Write train shards, held-out shards (+ classes.json) and a tokenizer under ``out_dir``."""
    out_dir = Path(out_dir)
    train = write_shards(samples(n_train, seed=0), out_dir / "train", per_shard)
    heldout = write_shards(samples(n_heldout, seed=1), out_dir / "heldout", per_shard)
    classes = {"classnames": CLASSNAMES, "templates": TEMPLATES}
    (out_dir / "heldout" / "classes.json").write_text(json.dumps(classes, indent=1) + "\n")
    rng = random.Random(2)
    texts = [
        caption(c, s, z, p, rng) for c in COLORS for s in SHAPES for z in SIZES for p in POSITIONS
    ]
    texts += [t.format(name) for t in TEMPLATES for name in CLASSNAMES]
    # Word-level, cased: the corpus's closed vocabulary, one token per word
    train_tokenizer(texts, out_dir / "tokenizer", kind="wordlevel", lowercase=False)
    (out_dir / "DONE").write_text("ok\n")
    last_train, last_held = len(train) - 1, len(heldout) - 1
    return {
        "train_shards": str(out_dir / "train" / f"{{00000..{last_train:05d}}}.tar"),
        "heldout_shards": str(out_dir / "heldout" / f"{{00000..{last_held:05d}}}.tar"),
        "tokenizer": str(out_dir / "tokenizer"),
    }


def masked_samples(n: int, seed: int, side: int = 64, objects: int = 1, one_colour: bool = False):
    """``n`` samples with a segmentation mask (``mask.png``: 0 background, 1-5 the shapes, as
    ``MASK_CLASSES``; the format of ``vlcontrast eval dense-knn``) beside jpg and txt. With
    ``objects=1`` the images are the demo corpus's (and carry its ``cls``); with more, each is a
    scene of that many shapes of random class, colour, size and place (:func:`render_scene`).
    ``one_colour``: every shape in one colour on one ground (:func:`render`)."""
    rng = random.Random(seed)
    for index in range(n):
        mask = Image.new("L", (side, side), 0)
        if objects == 1:
            color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
            color = ONE_COLOUR_NAME if one_colour else color
            size, position = rng.choice(list(SIZES)), rng.choice(list(POSITIONS))
            image = render(color, shape, size, position, rng, side, mask, one_colour)
            extra = {
                "txt": caption(color, shape, size, position, rng),
                "cls": str(CLASSNAMES.index(f"{color} {shape}")),
            }
        else:
            image, drawn = render_scene(rng, objects, side, mask, one_colour)
            names = [(d["color"], d["shape"]) for d in drawn]
            extra = {"txt": ", ".join(f"{_article(c)} {c} {shape}" for c, shape in names)}
        buffer, mask_png = io.BytesIO(), io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        mask.save(mask_png, format="PNG")
        yield {
            "__key__": f"{seed:04d}{index:07d}",
            "jpg": buffer.getvalue(),
            "mask.png": mask_png.getvalue(),
            **extra,
        }


def make_masked_set(
    out_dir: str | Path,
    n_train: int = 1000,
    n_heldout: int = 200,
    side: int = 64,
    objects: int = 3,
    one_colour: bool = False,
):
    """Train and held-out shards of :func:`masked_samples` with ``classes.json`` (the mask
    classes) beside each: the synthetic set of ``vlcontrast eval dense-knn``: scenes of
    ``objects`` shapes (``objects=1``: the demo corpus's images; ``one_colour``: all in one
    colour on one ground)."""
    if objects < 1:
        raise ValueError(f"objects must be at least 1, got {objects}")
    out = {}
    for split, n, seed in (("train", n_train, 11), ("heldout", n_heldout, 12)):
        folder = Path(out_dir) / split
        folder.mkdir(parents=True, exist_ok=True)
        paths = write_shards(
            masked_samples(n, seed, side, objects, one_colour), folder, per_shard=max(n, 1)
        )
        (folder / "classes.json").write_text(json.dumps(MASK_CLASSES) + "\n")
        out[split] = paths
    return out
