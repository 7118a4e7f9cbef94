"""A search index is a folder anyone can hand over, so opening one must run nothing and serving
one must send only images: an index whose sources or units are ``pipe:`` shell commands is
refused unless the user vouches for them (``--allow-pipe``, or the same ``--data`` given to a
build), and a record that points outside its folder, past the size limit or at bytes that are
not an image gets an error instead of the file."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from tests.test_search import build, planted, trained  # noqa: F401 - fixtures
from vlcontrast import cli
from vlcontrast.search import layout
from vlcontrast.search.engine import QueryError, SearchIndex


def tamper_manifest(index_dir, change) -> None:
    manifest = layout.read_manifest(index_dir)
    change(manifest)
    layout.write_manifest(index_dir, manifest)


def tamper_records(index_dir, change) -> None:
    """Rewrite unit 0's records through ``change`` (a list of dicts, edited in place)."""
    files = layout.IndexFiles.open(index_dir)
    rows = range(int(files.starts[1]))
    records = [{k: v for k, v in r.items() if k not in ("row", "url")} for r in files.records(rows)]
    change(records)
    name = files.units[0]["name"]
    layout.write_unit(
        index_dir, name, np.asarray(files.matrices[0]), records, Counter(), files.manifest["dtype"]
    )


def test_an_index_naming_a_shell_command_runs_it_only_when_allowed(
    tmp_path,
    trained,  # noqa: F811
    planted,  # noqa: F811
    capsys,
):
    build(tmp_path, trained, planted["pattern"])
    index_dir = tmp_path / "index"
    honest = SearchIndex(index_dir).image_bytes(0)
    marker = tmp_path / "ran"

    def plant(manifest):
        command = f"pipe:touch {marker} && cat "
        manifest["sources"][0]["data"] = command + manifest["sources"][0]["data"]
        for unit in manifest["units"]:
            unit["url"] = command + unit["url"]

    tamper_manifest(index_dir, plant)
    with pytest.raises(ValueError, match="shell command.*--allow-pipe"):
        SearchIndex(index_dir)
    assert cli.main(["search", str(index_dir), "a red circle"]) == 2
    assert cli.main(["serve", str(index_dir), "--port", "0"]) == 2
    assert cli.main(["index", "add", str(index_dir), "--data", planted["pattern"]]) == 2
    err = capsys.readouterr().err
    assert err.count("--allow-pipe") == 3 and "touch" in err
    assert not marker.exists()
    # vouched for, the command is what reads the image: the same bytes, and it ran
    assert SearchIndex(index_dir, allow_pipe=True).image_bytes(0) == honest
    assert marker.exists()


def test_a_build_from_a_pipe_resumes_without_the_flag_and_is_searched_with_it(
    tmp_path,
    trained,  # noqa: F811
    planted,  # noqa: F811
    capsys,
):
    shard = planted["dir"] / "00000.tar"
    out = tmp_path / "piped"
    command = [
        "index", "build", "--checkpoint", str(trained), "--data", f"pipe:cat {shard}",
        "--out", str(out), "--workers", "0", "--no-progress",
    ]  # fmt: skip
    assert cli.main(command) == 0
    assert cli.main(command) == 0  # a rerun (resume) of the user's own command
    assert cli.main(["search", str(out), "a red circle"]) == 2
    assert "--allow-pipe" in capsys.readouterr().err
    assert cli.main(["search", str(out), "a red circle", "--allow-pipe", "--k", "3"]) == 0
    assert "top 3 of 12 items" in capsys.readouterr().out


def test_records_pointing_outside_their_collection_get_no_bytes(
    tmp_path,
    trained,  # noqa: F811
    planted,  # noqa: F811
):
    folder = tmp_path / "folder" / "class0"
    folder.mkdir(parents=True)
    for item in planted["items"][:3]:
        (folder / f"{item['__key__']}.jpg").write_bytes(item["jpg"])
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the web\n")
    (folder / "notes.jpg").write_text("not an image either\n")  # inside, but no image
    build(tmp_path, trained, str(tmp_path / "folder"))
    index_dir = tmp_path / "index"

    def point_away(records):
        records[0]["where"]["path"] = "../../secret.txt"
        records[1]["where"]["path"] = str(secret)  # absolute
        records[2]["where"]["path"] = "class0/notes.jpg"

    good = SearchIndex(index_dir).image_bytes(0)[0]
    tamper_records(index_dir, point_away)
    index = SearchIndex(index_dir)
    for row, says in [(0, "not a path inside"), (1, "not a path inside"), (2, "not an image")]:
        with pytest.raises(QueryError, match=says):
            index.image_bytes(row)
    assert good.startswith(b"\xff\xd8")  # the untampered record was a JPEG


def test_a_shard_record_claiming_a_huge_member_is_refused_before_reading(
    tmp_path,
    trained,  # noqa: F811
    planted,  # noqa: F811
):
    build(tmp_path, trained, planted["pattern"])
    index_dir = tmp_path / "index"

    def claim(records):
        records[0]["where"]["size"] = 1 << 40  # a terabyte: never allocated
        records[1]["where"]["offset"] = 0  # the tar header: bytes, but not an image

    tamper_records(index_dir, claim)
    index = SearchIndex(index_dir)
    with pytest.raises(QueryError, match="over 512 MB"):
        index.image_bytes(0)
    with pytest.raises(QueryError, match="not an image"):
        index.image_bytes(1)
    assert index.image_bytes(2)[1] == "image/jpeg"


def test_an_index_naming_a_hub_dataset_fetches_nothing_unless_allowed(
    tmp_path,
    trained,  # noqa: F811
    planted,  # noqa: F811
    monkeypatch,
):
    """Built from a local dataset, then the manifest names a hub dataset instead: reading an
    image would download it, so it is refused unless ``allow_download``."""
    import datasets

    items = planted["items"][:3]
    rows = {"image": [{"bytes": item["jpg"], "path": None} for item in items]}
    features = datasets.Features({"image": datasets.Image()})
    data = datasets.Dataset.from_dict(rows, features=features)
    datasets.DatasetDict({"train": data}).save_to_disk(str(tmp_path / "hf"))
    build(tmp_path, trained, str(tmp_path / "hf"))
    index_dir = tmp_path / "index"

    def rename(manifest):
        manifest["sources"][0]["data"] = "hf:some-org/some-dataset"

    tamper_manifest(index_dir, rename)
    fetched = []
    monkeypatch.setattr(datasets, "load_dataset", lambda name, *a, **k: fetched.append(name))
    with pytest.raises(QueryError, match="'hf:some-org/some-dataset'.*--allow-download"):
        SearchIndex(index_dir).image_bytes(0)
    assert not fetched
    with pytest.raises(Exception):  # noqa: B017 - what the stand-in returns is no dataset
        SearchIndex(index_dir, allow_download=True).image_bytes(0)
    assert fetched == ["some-org/some-dataset"]


def test_an_index_naming_remote_shards_fetches_nothing_unless_allowed(
    tmp_path,
    trained,  # noqa: F811
    planted,  # noqa: F811
    monkeypatch,
):
    """Built from local shards, then the manifest points unit 0 at an https URL (the index
    maker's choice of host): reading its image would fetch from that host, so it is refused
    unless ``allow_download``; a sheet of hits says what it left out and why."""
    import webdataset

    from vlcontrast.search.sheet import hits_sheet

    build(tmp_path, trained, planted["pattern"])
    index_dir = tmp_path / "index"
    url = "https://collector.example/shard-00000.tar"

    def move(manifest):
        manifest["units"][0]["url"] = url

    tamper_manifest(index_dir, move)
    fetched = []

    def offline(where, *args, **kwargs):
        fetched.append(where)
        raise OSError("no network in this test")

    monkeypatch.setattr(webdataset, "gopen", offline)
    with pytest.raises(QueryError, match="another machine.*--allow-download"):
        SearchIndex(index_dir).image_bytes(0)
    left_out = hits_sheet(
        "q", [{"row": 0, "score": 1.0, "caption": "c"}], SearchIndex(index_dir), tmp_path / "s.png"
    )
    assert len(left_out) == 1 and "--allow-download" in left_out[0]
    assert not fetched
    with pytest.raises(QueryError, match="cannot be read"):
        SearchIndex(index_dir, allow_download=True).image_bytes(0)
    assert fetched == [url]


@pytest.mark.parametrize(
    "url, remote",
    [
        ("https://host/a.tar", True),
        ("http://10.0.0.1/a.tar", True),
        ("s3://bucket/a.tar", True),
        ("gs://bucket/a.tar", True),
        ("sftp://host/a.tar", True),
        ("hf://datasets/org/name/a.tar", True),
        ("/data/shards/a.tar", False),
        ("shards/a.tar", False),
        ("file:///data/a.tar", False),
        ("C:/data/a.tar", False),
        ("pipe:cat a.tar", False),  # a shell command: check_commands' business
    ],
)
def test_remote_urls_are_those_of_another_machine(url, remote):
    assert layout.is_remote(url) is remote
