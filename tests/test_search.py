"""Search: index build/load/query round trips, resume and add against a fresh build, exact vs
faiss vs brute force, byte-exact image serving, dedup and bad input, through the library and
``cli.main``."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import run_file, spawn_gloo, tiny_overrides
from vlcontrast import cli
from vlcontrast.data.shard_writer import write_shards
from vlcontrast.data.synthetic import samples
from vlcontrast.data.tar_reader import iter_samples
from vlcontrast.search import layout
from vlcontrast.search.backends import ExactBackend, build_faiss, open_backend
from vlcontrast.search.build import BuildOptions, build_index
from vlcontrast.search.dedup import dedup_index
from vlcontrast.search.engine import QueryError, SearchIndex
from vlcontrast.search.units import SourceSpec
from vlcontrast.train import checkpoint as checkpoint_lib

# float32 so that an image's own score (1.0) stands above its neighbours' (up to 0.9998 with the
# 4-step model); the default float16 is exercised by the resume test
OPTIONS = dict(batch_size=16, num_workers=0, progress=False, dtype="float32")


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    """A tiny CLIP trained for 4 steps: its checkpoint directory. (Its embeddings are nearly
    collapsed, cosine 0.96-0.9998 between different images, so similarity thresholds are tested
    on planted vectors.)"""
    out = tmp_path_factory.mktemp("search_run")
    assert cli.main(["train", run_file(out), *tiny_overrides(corpus, out)]) == 0
    return checkpoint_lib.latest(out / "checkpoints")


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """4 shards of 12 samples; the first sample of shards 1 and 3 is a byte copy of sample 0
    and sample 5 of shard 0 (new keys), so their embeddings are identical."""
    out = tmp_path_factory.mktemp("planted")
    items = list(samples(48, seed=7))
    copies = {12: 0, 36: 5}
    for target, source in copies.items():
        items[target] = {**items[source], "__key__": f"copy{target:04d}"}
    write_shards(items, out, 12)
    return {
        "pattern": str(out / "{00000..00003}.tar"),
        "dir": out,
        "items": items,
        "pairs": [(source, target) for target, source in copies.items()],
    }


def build(tmp_path, trained, pattern, name="index", **kwargs):
    options = BuildOptions(**{**OPTIONS, **kwargs})
    return build_index(tmp_path / name, [SourceSpec(pattern)], trained, options)


def unit_bytes(index_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((index_dir / "units").iterdir())}


def test_round_trip_finds_the_planted_duplicates_with_their_keys_and_captions(
    tmp_path, trained, planted
):
    summary = build(tmp_path, trained, planted["pattern"])
    assert summary["rows"] == 48 and summary["units"] == 4 and summary["skipped"] == {}
    index = SearchIndex(tmp_path / "index")  # loaded from disk alone
    assert len(index) == 48
    for source, target in planted["pairs"]:
        hits = index.similar(source, k=2)
        assert {h["row"] for h in hits} == {source, target}
        assert hits[1]["score"] == pytest.approx(hits[0]["score"], abs=1e-3)
        assert {h["key"] for h in hits} == {
            planted["items"][source]["__key__"],
            f"copy{target:04d}",
        }
    hits = index.search_text("a red circle", k=48)
    assert sorted(h["row"] for h in hits) == list(range(48))
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    by_key = {item["__key__"]: item for item in planted["items"]}
    for hit in hits:
        assert hit["caption"] == by_key[hit["key"]]["txt"]
        assert hit["label"] == int(by_key[hit["key"]]["cls"])
    # an image query embeds the bytes as the build did: the item itself comes first
    image = io.BytesIO(planted["items"][3]["jpg"])
    assert index.search_image(image.getvalue(), k=1)[0]["row"] == 3


def test_exact_blockwise_search_equals_brute_force_across_units_and_blocks(tmp_path):
    rng = np.random.default_rng(0)
    index_dir = tmp_path / "synthetic"
    vectors = synthetic_index(index_dir, rng, [50, 0, 31, 77], dim=16)
    files = layout.IndexFiles.open(index_dir)
    queries = rng.normal(size=(9, 16)).astype(np.float32)
    scores, rows = ExactBackend(files, block_rows=7).search(queries, 10)
    brute = queries @ vectors.T  # (9, 158)
    expected = np.argsort(-brute, axis=1)[:, :10]
    np.testing.assert_array_equal(rows, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(brute, expected, 1), rtol=1e-5)
    assert ExactBackend(files).search(queries, 1000)[1].shape == (9, 158)  # k > N: all rows


def synthetic_index(index_dir: Path, rng, sizes: list[int], dim: int) -> np.ndarray:
    """An index of random unit vectors written through the layout, float32; returns them."""
    index_dir.mkdir(parents=True)
    units, chunks = [], []
    for u, n in enumerate(sizes):
        x = rng.normal(size=(n, dim)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True) + 1e-12
        records = [{"key": f"{u}-{i}", "caption": None, "where": {}} for i in range(n)]
        layout.write_unit(index_dir, f"u{u:06d}", x, records, {}, "float32")
        units.append({"name": f"u{u:06d}", "source": 0, "url": f"s{u}.tar", "start": 0, "stop": 0})
        chunks.append(x)
    manifest = {
        "format": layout.FORMAT,
        "checkpoint": "none",
        "dim": dim,
        "dtype": "float32",
        "sources": [],
        "units": units,
    }
    layout.write_manifest(index_dir, manifest)
    return np.concatenate(chunks)


def test_faiss_agrees_with_exact_search(tmp_path):
    pytest.importorskip("faiss")
    rng = np.random.default_rng(1)
    index_dir = tmp_path / "synthetic"
    synthetic_index(index_dir, rng, [1500, 1500], dim=32)
    files = layout.IndexFiles.open(index_dir)
    queries = files.vectors(np.arange(0, 3000, 97))
    exact_scores, exact_rows = ExactBackend(files).search(queries, 10)
    flat = build_faiss(files, "flat")
    assert flat["recall_at_10"] == 1.0
    backend = open_backend(files)  # auto: the saved, current faiss index
    assert backend.name == "faiss"
    scores, rows = backend.search(queries, 10)
    np.testing.assert_array_equal(rows, exact_rows)
    np.testing.assert_allclose(scores, exact_scores, rtol=1e-4)
    hnsw = build_faiss(files, "hnsw", {"M": 16})
    assert hnsw["recall_at_10"] >= 0.95 and hnsw["params"]["M"] == 16
    _, rows = open_backend(files, "faiss").search(queries, 10)
    assert np.array_equal(rows[:, 0], exact_rows[:, 0])  # each query's own vector comes first
    coarse = build_faiss(files, "ivfpq", {"nlist": 16, "pq_m": 8, "nprobe": 16, "rerank": 1})
    ivfpq = build_faiss(files, "ivfpq", {"nlist": 16, "pq_m": 8, "nprobe": 16})
    # 8 bytes per 32-d vector order close neighbours coarsely; re-scoring 10 x k candidates fixes it
    assert 0.3 < coarse["recall_at_10"] < 0.9 and ivfpq["recall_at_10"] >= 0.97
    with pytest.raises(ValueError, match="unknown parameter"):
        build_faiss(files, "hnsw", {"nprobe": 4})


def _mutate_arrays(change):
    """A mutation of ``faiss.safetensors``: ``change(arrays)`` edits the dict in place."""

    def apply(index_dir: Path, n: int) -> None:
        from safetensors.numpy import load_file, save_file

        arrays = load_file(index_dir / "faiss.safetensors")
        change(arrays, n)
        save_file(arrays, index_dir / "faiss.safetensors")

    return apply


def _mutate_info(change):
    def apply(index_dir: Path, n: int) -> None:
        info = json.loads((index_dir / "faiss.json").read_text())
        change(info, n)
        (index_dir / "faiss.json").write_text(json.dumps(info))

    return apply


def _link_down(arrays, n):
    """Point a level-1 slot of a node on level 2 or more at a node that has only level 0."""
    levels, offsets = arrays["levels"], arrays["offsets"]
    high, low = int(np.flatnonzero(levels >= 2)[0]), int(np.flatnonzero(levels == 1)[0])
    arrays["neighbors"][offsets[high] + 2 * 8] = low  # M=8: 16 level-0 slots, then level 1's


def _entry_below_top(index_dir: Path, n: int) -> None:
    """Enter the graph at a node that has only level 0, the top level left as it is."""
    from safetensors.numpy import load_file

    low = int(np.flatnonzero(load_file(index_dir / "faiss.safetensors")["levels"] == 1)[0])
    _mutate_info(lambda info, n: info["graph"].__setitem__("entry_point", low))(index_dir, n)


def _legacy(index_dir: Path, n: int) -> None:
    """An index saved by the earlier format: faiss's own file, read by faiss's parser."""
    info = json.loads((index_dir / "faiss.json").read_text())
    del info["format"]
    (index_dir / "faiss.json").write_text(json.dumps(info))
    (index_dir / "faiss.index").write_bytes(b"IHNf" + bytes(64))


def _garbage(index_dir: Path, n: int) -> None:
    (index_dir / "faiss.safetensors").write_bytes((1 << 40).to_bytes(8, "little") + b"{}")


CRAFTED = {
    "hnsw": {
        "neighbour outside": (
            _mutate_arrays(lambda a, n: a["neighbors"].__setitem__(3, n)),
            "not a row",
        ),
        "link below its level": (_mutate_arrays(_link_down), "below its level"),
        "offsets": (_mutate_arrays(lambda a, n: a["offsets"].__setitem__(-1, 10**9)), "offsets"),
        "level": (_mutate_arrays(lambda a, n: a["levels"].__setitem__(0, 99)), "level is out"),
        "level 0": (_mutate_arrays(lambda a, n: a["levels"].__setitem__(0, 0)), "level is out"),
        "dtype": (
            _mutate_arrays(
                lambda a, n: a.__setitem__("neighbors", a["neighbors"].astype(np.int64))
            ),
            "int64, not",
        ),
        "entry point": (
            _mutate_info(lambda i, n: i["graph"].__setitem__("entry_point", n)),
            "entry point",
        ),
        "entry point below the top": (_entry_below_top, "entry point"),
        "ef_search": (
            _mutate_info(lambda i, n: i["params"].__setitem__("ef_search", 10**9)),
            "outside",
        ),
        "not safetensors": (_garbage, "faiss.safetensors"),
        "legacy faiss.index": (_legacy, "earlier version"),
        "not a description": (
            lambda d, n: (d / "faiss.json").write_text('{"rows": 600}'),
            "description",
        ),
    },
    "ivfpq": {
        "id outside": (_mutate_arrays(lambda a, n: a["ids"].__setitem__(0, n)), "not a row"),
        "sizes": (
            _mutate_arrays(lambda a, n: a["list_sizes"].__setitem__(0, a["list_sizes"][0] + 1)),
            "add up",
        ),
        "centroid": (
            _mutate_arrays(lambda a, n: a["centroids"].__setitem__((0, 0), np.nan)),
            "finite",
        ),
        "codes": (
            _mutate_arrays(lambda a, n: a.__setitem__("codes", a["codes"][:, :4].copy())),
            "shape",
        ),
        "extra": (
            _mutate_arrays(lambda a, n: a.__setitem__("more", np.zeros(3, np.int64))),
            "unexpected",
        ),
        "rerank": (_mutate_info(lambda i, n: i["params"].__setitem__("rerank", 10**6)), "outside"),
    },
}


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq"])
def test_a_saved_faiss_index_loads_as_the_one_built_without_faiss_own_reader(
    tmp_path, kind, monkeypatch
):
    faiss = pytest.importorskip("faiss")
    from vlcontrast.search import backends

    def refuse(*args, **kwargs):
        raise AssertionError("faiss's own parser was called")

    monkeypatch.setattr(faiss, "read_index", refuse)
    monkeypatch.setattr(faiss, "deserialize_index", refuse)
    synthetic_index(tmp_path / "ix", np.random.default_rng(3), [400, 200], dim=32)
    files = layout.IndexFiles.open(tmp_path / "ix")
    params = {"hnsw": {"M": 8}, "ivfpq": {"nlist": 16, "pq_m": 8, "nprobe": 4}, "flat": {}}[kind]
    (tmp_path / "ix" / "faiss.index").write_bytes(b"an earlier version's file")
    built = backends.make_faiss(files, kind, params)
    backends.save_faiss(built, 0.0)
    assert not (tmp_path / "ix" / "faiss.index").exists()  # a rebuild removes it
    loaded = open_backend(files, "faiss")
    assert loaded.index is not built.index and loaded.kind == kind
    queries = files.vectors(np.arange(0, 600, 7)) + 0.05
    for k in (1, 10, 600):
        want, got = built.index.search(queries, k), loaded.index.search(queries, k)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_array_equal(got[0], want[0])


@pytest.mark.parametrize(
    "kind,name", [(kind, name) for kind, cases in CRAFTED.items() for name in cases]
)
def test_a_crafted_faiss_index_is_refused_before_faiss_sees_it(tmp_path, kind, name, capsys):
    pytest.importorskip("faiss")
    from vlcontrast.search.faiss_file import BadFaissIndex

    synthetic_index(tmp_path / "ix", np.random.default_rng(4), [600], dim=32)
    files = layout.IndexFiles.open(tmp_path / "ix")
    params = {"hnsw": {"M": 8}, "ivfpq": {"nlist": 16, "pq_m": 8, "nprobe": 4}}[kind]
    build_faiss(files, kind, params)
    open_backend(files, "faiss")  # the untouched index loads
    mutate, message = CRAFTED[kind][name]
    mutate(tmp_path / "ix", len(files))
    with pytest.raises(BadFaissIndex, match=message) as refused:
        open_backend(files, "faiss")
    assert "--backend exact" in str(refused.value) and "--faiss" in str(refused.value)
    capsys.readouterr()
    assert open_backend(files).name == "exact"  # auto: searches exactly, and says why
    assert message.split()[0] in capsys.readouterr().err


def test_index_info_names_the_faiss_index_and_survives_a_broken_description(tmp_path, capsys):
    pytest.importorskip("faiss")
    synthetic_index(tmp_path / "ix", np.random.default_rng(5), [300], dim=16)
    build_faiss(layout.IndexFiles.open(tmp_path / "ix"), "hnsw", {"M": 8})
    assert cli.main(["index", "info", str(tmp_path / "ix")]) == 0
    out = capsys.readouterr().out
    assert "300 items, dim 16" in out and "faiss: hnsw" in out and "(current)" in out
    (tmp_path / "ix" / "faiss.json").write_text('{"kind": ')
    assert cli.main(["index", "info", str(tmp_path / "ix")]) == 0
    assert "faiss.json is not readable" in capsys.readouterr().out


def test_a_killed_build_resumes_to_the_same_index_as_a_fresh_one(
    tmp_path, trained, planted, monkeypatch
):
    fresh = build(tmp_path, trained, planted["pattern"], "fresh", dtype="float16")
    real, written = layout.write_unit, []

    def dying(index_dir, name, *args):
        if len(written) == 2:
            raise KeyboardInterrupt("simulated kill")
        written.append(name)
        real(index_dir, name, *args)

    monkeypatch.setattr(layout, "write_unit", dying)
    with pytest.raises(KeyboardInterrupt):
        build(tmp_path, trained, planted["pattern"], "resumed", dtype="float16")
    monkeypatch.setattr(layout, "write_unit", real)
    assert layout.IndexFiles.open(tmp_path / "resumed").pending == ["u000002", "u000003"]
    resumed = build(tmp_path, trained, planted["pattern"], "resumed", dtype="float16")
    assert resumed["embedded_now"] == 24 and resumed["rows"] == fresh["rows"] == 48
    assert unit_bytes(tmp_path / "resumed") == unit_bytes(tmp_path / "fresh")
    half = layout.IndexFiles.open(tmp_path / "fresh")
    assert half.matrices[0].dtype == np.float16
    full = layout.IndexFiles.open(build(tmp_path, trained, planted["pattern"], "f32")["index"])
    np.testing.assert_allclose(half.vectors(range(48)), full.vectors(range(48)), atol=1e-3)


def test_index_add_equals_a_build_over_all_shards(tmp_path, trained, planted):
    root = planted["dir"]
    build(tmp_path, trained, planted["pattern"], "all")
    build(tmp_path, trained, str(root / "{00000..00001}.tar"), "grown")
    args = [
        "index",
        "add",
        str(tmp_path / "grown"),
        "--data",
        planted["pattern"],
        "--workers",
        "0",
        "--no-progress",
    ]
    assert cli.main(args) == 0  # shards 0-1 are skipped, 2-3 embedded
    grown, full = SearchIndex(tmp_path / "grown"), SearchIndex(tmp_path / "all")
    assert len(grown) == len(full) == 48
    np.testing.assert_array_equal(grown.files.vectors(range(48)), full.files.vectors(range(48)))
    assert grown.files.records(range(48)) == full.files.records(range(48))
    assert grown.similar(12, 5) == full.similar(12, 5)


def test_an_image_served_by_key_is_byte_identical_to_its_shard_member(tmp_path, trained, planted):
    build(tmp_path, trained, planted["pattern"])
    index = SearchIndex(tmp_path / "index")
    members = {}
    for shard in sorted(planted["dir"].glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".jpg"):
                    members[member.name[:-4]] = tar.extractfile(member).read()
    for row in range(len(index)):
        data, content_type = index.image_bytes(row)
        assert data == members[index.record(row)["key"]] and content_type == "image/jpeg"


def test_a_directory_of_shards_is_indexed_as_shards(tmp_path, trained, planted, capsys):
    """``--data DIR`` with tar files in DIR, as --help says (it was taken for an image-folder
    tree: "no images in class sub-folders")."""
    args = ["index", "build", "--checkpoint", str(trained), "--data", str(planted["dir"])]
    assert cli.main([*args, "--out", str(tmp_path / "index"), "--workers", "0"]) == 0
    assert len(SearchIndex(tmp_path / "index")) == 48


def test_dedup_finds_the_planted_duplicates(tmp_path, capsys):
    rng = np.random.default_rng(2)
    index_dir = tmp_path / "synthetic"
    synthetic_index(index_dir, rng, [120, 80], dim=32)  # random: cosine < 0.8 between rows
    matrix = np.load(index_dir / "units" / "u000000.npy")
    second = np.load(index_dir / "units" / "u000001.npy")

    def near(x, noise):
        y = x + noise * rng.normal(size=x.shape)
        return (y / np.linalg.norm(y)).astype(np.float32)

    matrix[10] = near(matrix[3], 0.02)  # a near copy (cosine ~0.99)
    second[5] = near(matrix[50], 0.03)  # a chain across units: 50 ~ 125 ~ 126, 50 !~ 126
    second[6] = near(second[5], 0.03)
    np.save(index_dir / "units" / "u000000.npy", matrix)
    np.save(index_dir / "units" / "u000001.npy", second)
    report = dedup_index(index_dir, threshold=0.95, k=2)
    assert report["groups_rows"] == [[3, 10], [50, 125, 126]]
    table = Path(report["table"]).read_text().splitlines()
    assert table[0].split("\t") == ["group", "row", "key", "url", "score"]
    assert [line.split("\t")[:3] for line in table[1:]] == [
        ["0", "3", "0-3"],
        ["0", "10", "0-10"],
        ["1", "50", "0-50"],
        ["1", "125", "1-5"],
        ["1", "126", "1-6"],
    ]
    out = tmp_path / "dups.tsv"
    assert (
        cli.main(["index", "dedup", str(index_dir), "--threshold", "0.95", "--out", str(out)]) == 0
    )
    assert "2 group(s) of near-duplicates (5 items; 3 could go)" in capsys.readouterr().out
    assert out.read_text() == "\n".join(table) + "\n"
    assert dedup_index(index_dir, threshold=0.9999)["groups"] == 0


def test_bad_images_and_a_truncated_shard_are_skipped_and_counted(tmp_path, trained):
    items = list(samples(10, seed=3))
    items[2] = {**items[2], "jpg": b"not a jpeg at all"}
    items[4] = {k: v for k, v in items[4].items() if k != "jpg"}
    write_shards(items, tmp_path / "bad", 5)
    cut = tmp_path / "bad" / "00001.tar"
    cut.write_bytes(cut.read_bytes()[:3000])  # cut inside the second shard
    summary = build(tmp_path, trained, str(tmp_path / "bad" / "{00000..00001}.tar"))
    assert summary["skipped"]["corrupt_image"] == 1 and summary["skipped"]["missing_image"] == 1
    assert summary["skipped"]["truncated_shard"] == 1
    intact = [raw for raw in iter_samples(str(cut), lambda reason: None) if "jpg" in raw]
    assert summary["rows"] == 3 + len(intact)
    index = SearchIndex(tmp_path / "index")
    assert {r["key"] for r in index.files.records(range(3))} == {
        items[i]["__key__"] for i in (0, 1, 3)
    }


def test_queries_that_cannot_be_answered_say_why(tmp_path, trained, planted, capsys):
    build(tmp_path, trained, planted["pattern"])
    index = SearchIndex(tmp_path / "index")
    with pytest.raises(QueryError, match="empty query"):
        index.search_text("   ")
    with pytest.raises(QueryError, match="too long"):
        index.search_text("a" * 5000)
    with pytest.raises(QueryError, match="not an image"):
        index.search_image(b"<html>nope</html>")
    (tmp_path / "zero.jpg").symlink_to("/dev/zero")  # never read: it would never end
    with pytest.raises(QueryError, match="not_a_file"):
        index.search_image(tmp_path / "zero.jpg")
    with pytest.raises(QueryError, match="no item 48"):
        index.similar(48)
    assert cli.main(["search", str(tmp_path / "index"), ""]) == 2
    assert "empty query" in capsys.readouterr().err
    assert cli.main(["search", str(tmp_path / "nowhere"), "x"]) == 2
    assert "not a search index" in capsys.readouterr().err
    other = [
        "index",
        "build",
        "--checkpoint",
        str(trained),
        "--out",
        str(tmp_path / "index"),
        "--data",
        str(planted["dir"] / "00000.tar"),
        "--no-progress",
        "--workers",
        "0",
    ]
    assert cli.main(other) == 2
    assert "holds an index of other data" in capsys.readouterr().err


def test_the_search_command_prints_records_and_json(tmp_path, trained, planted, capsys):
    args = [
        "index",
        "build",
        "--checkpoint",
        str(trained),
        "--out",
        str(tmp_path / "ix"),
        "--data",
        planted["pattern"],
        "--workers",
        "2",
        "--batch-size",
        "8",
        "--no-progress",
        "--dtype",
        "float32",
    ]
    assert cli.main(args) == 0
    assert "48 items in 4 unit(s)" in capsys.readouterr().out
    assert cli.main(["search", str(tmp_path / "ix"), "a blue square", "-k", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert [h["rank"] for h in hits] == [0, 1, 2] and all("caption" in h for h in hits)
    image = tmp_path / "query.jpg"
    image.write_bytes(planted["items"][7]["jpg"])
    sheet = tmp_path / "hits.png"
    args = ["search", str(tmp_path / "ix"), "--image", str(image), "-k", "3", "--sheet", str(sheet)]
    assert cli.main(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"top 3 of 48 items for image {image}:"
    assert out[1].split() == ["rank", "score", "key", "caption"]
    assert planted["items"][7]["__key__"] in out[2] and out[-1] == f"hits drawn in {sheet}"
    with Image.open(sheet) as drawn:  # three tiles in a row under the title
        assert drawn.width >= 3 * 160 and np.asarray(drawn).std() > 10
    # two workers, one unit each at a time: the same index as one process reading in order
    build(tmp_path, trained, planted["pattern"], "serial", batch_size=8)
    assert unit_bytes(tmp_path / "ix") == unit_bytes(tmp_path / "serial")


def test_an_image_folder_is_indexed_and_served_from_its_files(tmp_path, trained, planted):
    for i, item in enumerate(planted["items"][:6]):
        folder = tmp_path / "folder" / f"class{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{item['__key__']}.jpg").write_bytes(item["jpg"])
    summary = build(tmp_path, trained, str(tmp_path / "folder"))
    assert summary["rows"] == 6
    index = SearchIndex(tmp_path / "index")
    record = index.record(0)
    assert record["key"].startswith("class0/") and record["label"] == 0
    data, _ = index.image_bytes(0)
    assert data == (tmp_path / "folder" / record["key"]).read_bytes()


@pytest.mark.slow  # multi-process end to end: the README's command runs it
def test_two_ranks_build_the_single_process_index(tmp_path, trained, planted):
    import torch

    from tests import distributed_search_case as case

    build(tmp_path, trained, planted["pattern"], "single")
    out = tmp_path / "ranks"
    spawn_gloo(case.worker, 2, tmp_path, str(out), planted["pattern"], str(trained))
    got = torch.load(out / "ranks.pt")
    assert got["embedded"] == [24, 24]  # two shards each
    assert got["summary"]["rows"] == 48
    assert unit_bytes(out) == unit_bytes(tmp_path / "single")


def test_a_hugging_face_dataset_is_indexed_and_its_images_read_back(tmp_path, trained, planted):
    import datasets

    items = planted["items"][:7]
    rows = {
        "image": [{"bytes": item["jpg"], "path": None} for item in items],
        "caption": [item["txt"] for item in items],
        "label": [int(item["cls"]) for item in items],
    }
    rows["image"][2] = {"bytes": b"corrupt", "path": None}
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "caption": datasets.Value("string"),
            "label": datasets.Value("int64"),
        }
    )
    data = datasets.Dataset.from_dict(rows, features=features)
    datasets.DatasetDict({"train": data}).save_to_disk(str(tmp_path / "hf"))
    summary = build(tmp_path, trained, str(tmp_path / "hf"))
    assert summary["rows"] == 6 and summary["skipped"] == {"corrupt_image": 1}
    index = SearchIndex(tmp_path / "index")
    for row, item in zip(range(6), [i for n, i in enumerate(items) if n != 2], strict=True):
        record = index.record(row)
        assert record["caption"] == item["txt"] and record["label"] == int(item["cls"])
        assert index.image_bytes(row) == (item["jpg"], "image/jpeg")


def test_an_index_is_not_resumed_or_added_to_with_other_weights(tmp_path, trained, planted, capsys):
    import shutil

    from safetensors.torch import load_file, save_file

    ckpt = tmp_path / "ckpt"
    shutil.copytree(trained, ckpt)
    first = str(planted["dir"] / "{00000..00001}.tar")
    build(tmp_path, ckpt, first)
    weights = load_file(ckpt / "model.safetensors")
    name = sorted(weights)[-1]
    weights[name] = weights[name] + 1  # retrained in place
    save_file(weights, ckpt / "model.safetensors")
    add = ["index", "add", str(tmp_path / "index"), "--data", planted["pattern"], "--workers", "0"]
    assert cli.main(add) == 2
    assert "changed since" in capsys.readouterr().err
    assert len(SearchIndex(tmp_path / "index")) == 24  # nothing was added
    summary = build(tmp_path, ckpt, first, overwrite=True)
    assert summary["embedded_now"] == 24


def test_index_add_rebuilds_a_saved_faiss_index_with_its_own_settings(tmp_path, trained, planted):
    pytest.importorskip("faiss")
    root = planted["dir"]
    build(
        tmp_path,
        trained,
        str(root / "{00000..00001}.tar"),
        "ix",
        faiss="hnsw",
        faiss_params={"M": 8},
    )
    options = BuildOptions(**OPTIONS)
    summary = build_index(
        tmp_path / "ix", [SourceSpec(planted["pattern"])], None, options, add=True
    )
    assert summary["rows"] == 48
    assert summary["faiss"]["kind"] == "hnsw" and summary["faiss"]["params"]["M"] == 8
    assert open_backend(layout.IndexFiles.open(tmp_path / "ix")).name == "faiss"  # current again


def test_k_is_spelled_as_eval_spells_it_too():
    """``eval knn --k`` and ``search -k``: each search command takes both spellings."""
    from vlcontrast.cli import build_parser

    for command in (
        ["search", "IDX", "q"],
        ["serve", "IDX"],
        ["index", "dedup", "IDX", "--threshold", "0.9"],
    ):
        short = build_parser().parse_args([*command, "-k", "3"])
        long = build_parser().parse_args([*command, "--k", "3"])
        assert short.k == long.k == 3
