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


def test_a_member_over_the_size_limit_is_never_read(tmp_path, monkeypatch):
    """A stranger's shard with a huge member: it is skipped through in bounded reads, given as
    an empty ``Oversized`` (an image of it is ``too_large``), and the samples after it are read
    as they are. (The limit is lowered so the test writes 3 MB, not 512.)"""
    import random

    from vlcontrast.data import tar_reader
    from vlcontrast.data.image import decode_image
    from vlcontrast.data.inspect import check_image
    from vlcontrast.data.limits import Oversized
    from vlcontrast.data.skip import SkipSample

    monkeypatch.setattr(tar_reader, "MAX_FILE_BYTES", 1 << 20)
    huge = b"z" * (3 << 20)
    members = [("a/000.jpg", huge), ("a/000.txt", b"first"), *MEMBERS[2:4]]
    make_tar(tmp_path / "s.tar", members)

    class Counting(io.BytesIO):
        def read(self, n=-1):
            assert 0 <= n <= 1 << 20, n  # never the whole member at once
            return super().read(n)

    stream = Counting((tmp_path / "s.tar").read_bytes())
    found = list(tar_reader.iter_members(stream, lambda name: True))
    assert [(name, len(data), size) for name, data, _, size in found][:2] == [
        ("a/000.jpg", 0, 3 << 20),
        ("a/000.txt", 5, 5),
    ]
    samples = list(iter_samples(str(tmp_path / "s.tar"), print))
    assert isinstance(samples[0]["jpg"], Oversized) and samples[0]["jpg"].size == 3 << 20
    assert samples[0]["txt"] == b"first" and samples[1]["jpg"] == b"y" * 512
    for read in (lambda d: decode_image(d, None, random.Random(0)), check_image):
        with pytest.raises(SkipSample) as skip:  # training and shards inspect alike
            read(samples[0]["jpg"])
        assert skip.value.reason == "too_large"
