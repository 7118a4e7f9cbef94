"""Distributed dense evaluation: 2 and 3 gloo processes, each decoding and encoding every
world-th sample, give one process's features, masks and skip counts, in the shards' order, and
the dense kNN's and linear probe's metrics, confusion matrices and example predictions with
each rank scoring its share of the held-out images, with and without ``max_samples``, on shards
with bad samples among the good. Dense kNN's bank and the linear probe's training set stay
split: each rank holds its share of the training patches, and the ranks search them or fit
the probe on them together."""

import io

import pytest
import torch
from PIL import Image

from tests import distributed_dense_case as case
from tests.conftest import spawn_gloo
from vlcontrast.data.shard_writer import write_shards
from vlcontrast.data.synthetic import masked_samples


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Two shards of 21 samples: 17 good, a missing mask, a mask of another size, a corrupt
    image and a colour-coded mask, at different places."""
    out = tmp_path_factory.mktemp("dense_dist")
    good = list(masked_samples(34, seed=3))
    small, colour = io.BytesIO(), io.BytesIO()
    Image.new("L", (8, 8)).save(small, format="PNG")
    Image.new("RGB", (64, 64), (200, 10, 10)).save(colour, format="PNG")
    bad = [
        {"__key__": "nomask", "jpg": good[0]["jpg"]},
        {"__key__": "size", "jpg": good[0]["jpg"], "mask.png": small.getvalue()},
        {"__key__": "badimg", "jpg": b"not a jpeg", "mask.png": good[0]["mask.png"]},
        {"__key__": "colour", "jpg": good[0]["jpg"], "mask.png": colour.getvalue()},
    ]
    rows = good[:3] + bad[:1] + good[3:6] + bad[1:2] + good[6:20] + bad[2:] + good[20:]
    write_shards(iter(rows), out, per_shard=19)
    return str(out / "{00000..00001}.tar")


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_give_the_single_process_features_in_order(shards, tmp_path, world):
    want = {cap: case.read(shards, cap) for cap in case.CAPS}
    assert len(want[0]["feat"]) == 34 and len(want[7]["feat"]) == 7
    assert sum(want[0]["skipped"].values()) == 4 and want[7]["skipped"] == {
        "missing_mask": 1,
        "mask_size_mismatch": 1,
    }
    out = tmp_path / "results.pt"
    spawn_gloo(case.worker, world, tmp_path, shards, str(out))
    got = torch.load(out)
    assert got["ranks_agree"], "ranks ended with different features"
    assert torch.equal(got["rows"], torch.cat([case.rows_of(r) for r in range(world)]))
    # dense kNN's bank: each rank holds only its share of the 34 training images' patches
    assert sum(got["bank_rows"]) == 34 and max(got["bank_rows"]) <= 34 // world + 1
    # and the linear probe's training images too, for every call
    for rows in zip(*got["linear_rows"], strict=True):
        assert sum(rows) == 34 and max(rows) <= 34 // world + 1
    for cap in case.CAPS:
        torch.testing.assert_close(got[cap]["feat"], want[cap]["feat"])
        assert torch.equal(got[cap]["masks"], want[cap]["masks"])
        assert got[cap]["skipped"] == want[cap]["skipped"]
        for name in ("knn", "linear"):  # each rank scored its share; the pixels summed
            assert got[cap][name]["metrics"] == pytest.approx(want[cap][name]["metrics"])
            assert got[cap][name]["confusion"] == want[cap][name]["confusion"]
            assert got[cap][name]["skipped"] == want[cap][name]["skipped"]
            for key in ("images", "masks", "pred"):
                assert torch.equal(
                    got[cap][name]["examples"][key], want[cap][name]["examples"][key]
                )
