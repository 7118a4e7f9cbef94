"""Each data script round-trips: source -> shards -> the training loader yields the same pairs."""

import csv
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from tests.data_helpers import batches, dataset
from vlcontrast import cli
from vlcontrast.data.shards import DataPosition

COLORS = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220)}


def save_image(path, color, size=(40, 30), fmt="JPEG"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format=fmt)


def loaded_pairs(pattern, tokenizer, caption_key="txt") -> dict[str, tuple]:
    """key -> (caption, mean colour of the image) as the training loader yields them."""
    ds = dataset(pattern, tokenizer, batch=1, caption_key=caption_key)
    out = {}
    for batch in batches(ds, 0, DataPosition(), steps=len(ds.urls) * 100):
        if batch["keys"][0] in out:
            break  # the second epoch
        color = tuple(batch["images"][0].float().mean(dim=(1, 2)).round().int().tolist())
        out[batch["keys"][0]] = (batch["texts"][0], color)
    return out


def close(a, b, tol=8):
    return all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("table", ["csv", "tsv", "jsonl", "parquet"])
def test_captions_table_round_trip(tmp_path, tokenizer, table, capsys):
    rows = []
    for i in range(7):
        name = list(COLORS)[i % 3]
        save_image(tmp_path / "img" / f"{i}.png", COLORS[name], fmt="PNG")
        rows.append({"file": f"{i}.png", "text": f"a {name} square {i}", "source": "test"})
    rows.append({"file": "missing.png", "text": "gone", "source": "test"})
    rows.append({"file": "0.png", "text": "  ", "source": "test"})
    path = tmp_path / f"captions.{table}"
    if table in ("csv", "tsv"):
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, list(rows[0]), delimiter="\t" if table == "tsv" else ",")
            writer.writeheader()
            writer.writerows(rows)
    elif table == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    out = tmp_path / "shards"
    args = ["data", "captions", "--images", str(tmp_path / "img"), "--table", str(path)]
    args += ["--image-column", "file", "--caption-column", "text", "--out", str(out)]
    assert cli.main([*args, "--per-shard", "3", "--workers", "2", "--no-progress"]) == 0
    assert "7 samples in 3 shard(s)" in capsys.readouterr().out
    sizes = json.loads((out / "sizes.json").read_text())
    assert sizes == {"00000.tar": 3, "00001.tar": 3, "00002.tar": 1}
    stats = [json.loads((out / f"0000{i}_stats.json").read_text()) for i in range(3)]
    assert stats[2]["skipped"] == {"missing_image": 1, "empty_caption": 1}  # one vocabulary
    pairs = loaded_pairs(str(out / "{00000..00002}.tar"), tokenizer)
    got = sorted((text, color) for text, color in pairs.values())
    want = sorted((r["text"], COLORS[r["text"].split()[1]]) for r in rows[:7])
    assert [t for t, _ in got] == [t for t, _ in want]
    assert all(close(g, w) for (_, g), (_, w) in zip(got, want, strict=True))


def test_imagefolder_round_trip_with_templates_resize_and_rerun(tmp_path, tokenizer, capsys):
    for name, color in COLORS.items():
        for i in range(3):
            save_image(tmp_path / "tree" / name / f"{i}.jpg", color, size=(300, 200))
    (tmp_path / "tree" / "red" / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "shards"
    args = ["data", "imagefolder", str(tmp_path / "tree"), "--out", str(out), "--resize", "64"]
    args += ["--templates", "a photo of a {}.", "a {} thing", "--per-shard", "4", "--no-progress"]
    assert cli.main(args) == 0
    assert "skipped: corrupt_image=1" in capsys.readouterr().out
    classes = json.loads((out / "classes.json").read_text())["classnames"]
    assert classes == ["blue", "green", "red"]
    pairs = loaded_pairs(str(out / "{00000..00002}.tar"), tokenizer)
    assert len(pairs) == 9
    for text, color in pairs.values():
        name = next(n for n in COLORS if n in text)
        assert text in (f"a photo of a {name}.", f"a {name} thing") and close(color, COLORS[name])
    assert {t.startswith("a photo") for t, _ in pairs.values()} == {True, False}  # both used
    with Image.open(io.BytesIO(first_member(out / "00000.tar", ".jpg"))) as img:
        assert min(img.size) == 64  # resized
    # Rerun: finished shards are kept, an unfinished one (no stats file) is redone.
    (out / "00001_stats.json").unlink()
    before = (out / "00000.tar").stat().st_mtime_ns
    assert cli.main(args) == 0
    assert "(2 already done)" in capsys.readouterr().out
    assert (out / "00000.tar").stat().st_mtime_ns == before
    assert (out / "00001_stats.json").is_file()


def first_member(tar_path, suffix):
    import tarfile

    with tarfile.open(tar_path) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(suffix))
        return tar.extractfile(member).read()


def test_a_datasets_image_path_is_read_only_if_it_is_a_regular_file(tmp_path):
    """A stranger's dataset may point an image at any path (``{"bytes": None, "path": ...}``,
    as ``datasets.Image(decode=False)`` gives it): a device is skipped as ``not_a_file``,
    never read. (The rows are given as they come out of the dataset: building a real dataset
    with such a path makes ``datasets`` itself read it.)"""
    from vlcontrast.data.convert import HFImageText
    from vlcontrast.data.skip import SkipSample

    save_image(tmp_path / "ok.jpg", COLORS["red"])
    source = object.__new__(HFImageText)
    source.image_column, source.text_column = "image", "text"
    source._data = [
        {"image": {"bytes": None, "path": str(tmp_path / "ok.jpg")}, "text": "a red one"},
        {"image": {"bytes": None, "path": "/dev/zero"}, "text": "endless"},
    ]
    assert source.record(0)["image"] == (tmp_path / "ok.jpg").read_bytes()
    with pytest.raises(SkipSample, match="not_a_file"):
        source.record(1)


def test_hf_dataset_round_trip_with_several_captions(tmp_path, tokenizer, capsys):
    import datasets

    names = list(COLORS)
    images = [Image.new("RGB", (24, 24), COLORS[names[i % 3]]) for i in range(6)]
    texts = [[f"{names[i % 3]} one {i}", f"{names[i % 3]} two {i}"] for i in range(6)]
    data = datasets.Dataset.from_dict({"image": images, "text": texts})
    data = data.cast_column("image", datasets.Image())
    data.save_to_disk(str(tmp_path / "hf"))
    out = tmp_path / "shards"
    args = ["data", "hf", str(tmp_path / "hf"), "--out", str(out), "--per-shard", "4"]
    assert cli.main([*args, "--no-progress"]) == 0
    pairs = loaded_pairs(str(out / "{00000..00001}.tar"), tokenizer, caption_key="json.captions")
    assert len(pairs) == 6
    for text, color in pairs.values():
        index = int(text.split()[-1])
        assert text in texts[index] and close(color, COLORS[names[index % 3]])


def test_shards_inspect(corpus, tmp_path, capsys):
    sheet = tmp_path / "sheet.png"
    args = ["shards", "inspect", corpus["heldout_shards"], "--sheet", str(sheet)]
    assert cli.main([*args, "--json", str(tmp_path / "stats.json")]) == 0
    out = capsys.readouterr().out
    assert "64 samples in 1 shard(s)" in out and "jpg=64" in out and "problems: none" in out
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert sum(stats["caption_words"].values()) == 64
    with Image.open(sheet) as img:
        assert img.size == (640, 4 * 208) and np.asarray(img).std() > 10


def test_a_wrong_column_is_one_clear_message(tmp_path, capsys):
    (tmp_path / "img").mkdir()
    (tmp_path / "t.csv").write_text("file,text\n0.png,a cat\n")
    args = ["data", "captions", "--images", str(tmp_path / "img"), "--table"]
    args += [str(tmp_path / "t.csv"), "--image-column", "path", "--out", str(tmp_path / "o")]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "no column 'path'" in err and "['file', 'text']" in err and "--image-column" in err


def test_the_contact_sheet_draws_from_every_shard(tmp_path):
    from vlcontrast.data.inspect import inspect_shards
    from vlcontrast.data.shard_writer import write_shards
    from vlcontrast.data.synthetic import samples

    write_shards(samples(200, seed=3, side=16), tmp_path, per_shard=40)  # 5 shards
    stats = inspect_shards(str(tmp_path / "{00000..00004}.tar"), sheet=16, progress=False)
    keys = [key for key, _, _ in stats["examples"]]
    assert len(keys) == 16 and keys == sorted(keys)
    shards_seen = {int(key[-7:]) // 40 for key in keys}
    assert len(shards_seen) >= 4, shards_seen  # not the first 16 samples of the first shard


@pytest.mark.parametrize("how", ["label column", "folder"])
def test_captions_keep_labels_for_evaluation(tmp_path, how, capsys):
    import tarfile

    rows = []
    for i in range(6):
        name = list(COLORS)[i % 3]
        save_image(tmp_path / "img" / name / f"{i}.png", COLORS[name], fmt="PNG")
        rows.append({"image": f"{name}/{i}.png", "caption": f"a {name} square", "label": name})
    table = tmp_path / "captions.jsonl"
    table.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["data", "captions", "--images", str(tmp_path / "img"), "--table", str(table)]
    args += ["--out", str(tmp_path / "shards")]
    if how == "folder":
        args.append("--label-from-folder")
    assert cli.main(args) == 0
    classes = json.loads((tmp_path / "shards" / "classes.json").read_text())["classnames"]
    assert classes == sorted(list(COLORS)[:3])
    with tarfile.open(tmp_path / "shards" / "00000.tar") as tar:
        labels = {
            m.name.split(".")[0]: int(tar.extractfile(m).read())
            for m in tar.getmembers()
            if m.name.endswith(".cls")
        }
    assert len(labels) == 6
    assert sorted(classes[label] for label in labels.values()) == sorted(r["label"] for r in rows)


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` grey pixels in a few bytes (no pixel data)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_images_too_large_are_skipped_from_their_header_unless_resized():
    """Over data.max_pixels' 50 MP (which training would skip) or past PIL's bomb guard:
    ``too_large``, decided from the header; a file without its pixels stays ``corrupt_image``."""
    from vlcontrast.data.convert import encode_image
    from vlcontrast.data.skip import SkipSample

    for size in ((8000, 7000), (20000, 20000)):  # 56 MP; 400 MP (PIL: DecompressionBombError)
        with pytest.raises(SkipSample) as skip:
            encode_image(png_header(*size), 0)
        assert skip.value.reason == "too_large", size
    with pytest.raises(SkipSample) as skip:  # resized: decoded, and this one has no pixels
        encode_image(png_header(8000, 7000), 256)
    assert skip.value.reason == "corrupt_image"
    small = io.BytesIO()
    Image.new("RGB", (40, 30)).save(small, format="PNG")
    assert encode_image(small.getvalue(), 0)[2]["width"] == 40


def test_a_folder_of_unlabelled_images_becomes_image_only_shards(tmp_path, capsys):
    """``data images``: every image at any depth, no captions or labels; bad files counted; the
    image-only loader reads each once; inspect calls them image-only, not missing captions."""
    photos = tmp_path / "photos"
    colours = {"a.jpg": "red", "trip/b.png": "green", "trip/day2/c.jpg": "blue"}
    for name, colour in colours.items():
        save_image(photos / name, COLORS[colour], fmt="PNG" if name.endswith(".png") else "JPEG")
    (photos / "trip" / "broken.jpg").write_bytes(b"not an image")
    (photos / "notes.txt").write_text("not an image either")
    (photos / "gone.jpg").symlink_to(photos / "deleted.jpg")  # a broken link
    (photos / "zero.jpg").symlink_to("/dev/zero")  # reading it would never end
    os.mkfifo(photos / "pipe.png")  # reading it would block
    out = tmp_path / "shards"
    assert cli.main(["data", "images", str(photos), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "3 samples in 1 shard(s)" in printed
    assert "corrupt_image=1" in printed and "missing_image=1" in printed
    assert "not_a_file=2" in printed
    assert "objective.name=simclr" in printed  # the next command trains an image-only method
    assert "data.batch_size=2" in printed  # fewer images than the default batch

    import tarfile

    with tarfile.open(out / "00000.tar") as tar:
        names = tar.getnames()
        paths = [json.loads(tar.extractfile(n).read())["path"] for n in names if ".json" in n]
    assert not [n for n in names if n.endswith((".txt", ".cls"))]
    assert paths == sorted(colours) and not (out / "classes.json").exists()

    decoder_ds = dataset(str(out / "00000.tar"), None, batch=1, caption_key="")
    seen = {}
    for batch in batches(decoder_ds, 0, DataPosition(), steps=3):
        assert "texts" not in batch or not batch["texts"]
        seen[batch["keys"][0]] = tuple(batch["images"][0].float().mean(dim=(1, 2)).tolist())
    assert len(seen) == 3
    for colour, mean in zip(sorted(colours.items()), seen.values(), strict=True):
        assert close(mean, COLORS[colour[1]])

    sheet = tmp_path / "sheet.png"
    assert cli.main(["shards", "inspect", str(out / "00000.tar"), "--sheet", str(sheet)]) == 0
    printed = capsys.readouterr().out
    assert "problems: none" in printed and "captions: none (image-only shards" in printed
    assert "missing_caption" not in printed and "contact sheet" in printed and sheet.is_file()


def test_pointing_training_at_an_image_folder_says_how_to_make_shards(tmp_path, capsys):
    save_image(tmp_path / "photos" / "a.jpg", COLORS["red"])
    out = tmp_path / "run"
    args = ["train", "model.kind=image", "objective.name=simclr", f"train.output_dir={out}"]
    assert cli.main([*args, f"data.train_shards={tmp_path / 'photos'}"]) == 2
    err = capsys.readouterr().err
    assert "holds images, not shards" in err and "vlcontrast data images" in err
    assert not out.exists()  # refused before anything is written


def test_imagefolder_counts_the_images_beside_its_class_folders(tmp_path, capsys):
    save_image(tmp_path / "tree" / "red" / "1.jpg", COLORS["red"])
    (tmp_path / "tree" / "red" / "zero.jpg").symlink_to("/dev/zero")  # skipped, never read
    save_image(tmp_path / "tree" / "loose.jpg", COLORS["blue"])
    args = ["data", "imagefolder", str(tmp_path / "tree"), "--out", str(tmp_path / "s")]
    assert cli.main([*args, "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "1 samples" in printed and "note: 1 image(s) directly under" in printed
    assert "skipped: not_a_file=1" in printed
    flat = tmp_path / "flat"
    save_image(flat / "x.jpg", COLORS["red"])
    assert cli.main(["data", "imagefolder", str(flat), "--out", str(tmp_path / "t")]) == 2
    assert f"'vlcontrast data images {flat} --out SHARDS'" in capsys.readouterr().err


def test_a_rerun_into_another_sources_shards_is_refused(tmp_path, capsys):
    """A rerun keeps finished shards; from another folder, or with another --per-shard, it
    would mix two sources' records, so it stops before writing and says what changed."""
    for folder, colour in (("first", "red"), ("second", "blue")):
        for i in range(4):
            save_image(tmp_path / folder / f"{i}.jpg", COLORS[colour])
    out = tmp_path / "shards"
    args = ["data", "images", "--out", str(out), "--per-shard", "2", "--no-progress"]
    assert cli.main([*args, str(tmp_path / "first")]) == 0
    (out / "00001_stats.json").unlink()  # stopped half-way
    before = (out / "00000.tar").read_bytes()
    assert cli.main([*args, str(tmp_path / "second")]) == 2
    err = capsys.readouterr().err
    assert "holds shards made from another source or with other settings" in err
    assert "write to a new --out" in err and (out / "00000.tar").read_bytes() == before
    assert not (out / "00001_stats.json").exists()  # nothing written
    other = ["data", "images", "--out", str(out), "--per-shard", "3", "--no-progress"]
    assert cli.main([*other, str(tmp_path / "first")]) == 2
    assert "per_shard 2 -> 3" in capsys.readouterr().err
    assert cli.main([*args, str(tmp_path / "first")]) == 0  # the same source finishes
    assert "(1 already done)" in capsys.readouterr().out
