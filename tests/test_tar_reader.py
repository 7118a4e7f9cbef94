"""Our tar reader against Python's tarfile: names of every length, pax paths, compression, cuts."""

import gzip
import io
import tarfile

import pytest

from vlcontrast.data.tar_reader import iter_samples


def make_tar(path, members, fmt=tarfile.GNU_FORMAT):
    with tarfile.open(path, "w", format=fmt) as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))


MEMBERS = [
    ("a/000.jpg", b"x" * 700),
    ("a/000.txt", b"first"),
    ("d" * 120 + "/001.jpg", b"y" * 512),  # a GNU long name (or a pax path)
    ("d" * 120 + "/001.txt", b"second"),
    ("a/\u00e9t\u00e9.txt", b"third"),  # non-ASCII: a pax header in PAX format
]


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
def test_samples_match_tarfile(tmp_path, fmt):
    members = MEMBERS if fmt != tarfile.USTAR_FORMAT else MEMBERS[:2] + MEMBERS[4:]
    if fmt == tarfile.USTAR_FORMAT:
        members = [m for m in members if m[0].isascii()]
    path = tmp_path / "s.tar"
    make_tar(path, members, fmt)
    errors = []
    samples = list(iter_samples(str(path), errors.append))
    assert errors == []
    expected = {}
    with tarfile.open(path) as tar:
        for info in tar:
            key, ext = info.name.rsplit(".", 1)
            expected.setdefault(key, {})[ext] = tar.extractfile(info).read()
    assert [{k: v for k, v in s.items() if not k.startswith("__")} for s in samples] == list(
        expected.values()
    )
    assert [s["__key__"] for s in samples] == list(expected)


def test_skip_and_gzip(tmp_path):
    path = tmp_path / "s.tar"
    make_tar(path, MEMBERS[:4])
    zipped = tmp_path / "s.tar.gz"
    zipped.write_bytes(gzip.compress(path.read_bytes()))
    for url in (str(path), str(zipped)):
        samples = list(iter_samples(url, print, skip=1))
        assert [s["txt"] for s in samples] == [b"second"]


@pytest.mark.parametrize("cut", [100, 512 + 300, 2048 + 10])
def test_a_cut_tar_is_reported_and_the_cut_sample_dropped(tmp_path, cut):
    path = tmp_path / "s.tar"
    make_tar(path, MEMBERS[:4])
    path.write_bytes(path.read_bytes()[:cut])
    errors = []
    samples = list(iter_samples(str(path), errors.append))
    assert errors == ["truncated_shard"]
    assert all("txt" in s for s in samples)  # never a half sample
