"""Sharded checkpoints in one process (the 2-process FSDP run is tests/test_fsdp.py): the shards
and state that every rank writes come back exactly onto a fresh model and optimizer, eval reads
the weights, consolidation gives the single-file layout that a plain optimizer loads, and a
metadata file that would run code is refused."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from tests.conftest import tiny_overrides
from vlcontrast import config as config_lib
from vlcontrast.cli import main
from vlcontrast.config import ConfigError
from vlcontrast.models.build import build_model
from vlcontrast.models.load import load_model
from vlcontrast.models.sharded_weights import SHARDS
from vlcontrast.models.text_tower import load_tokenizer
from vlcontrast.train import checkpoint, sharded_checkpoint


def trained(cfg, seed: int):
    torch.manual_seed(seed)
    model = build_model(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(2):
        sum((p.float() ** 2).sum() for p in model.parameters()).backward()
        optimizer.step()
        optimizer.zero_grad()
    return model, optimizer


def assert_same_optimizer(a: torch.optim.Optimizer, b: torch.optim.Optimizer) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    assert sa["state"].keys() == sb["state"].keys()
    for key, slots in sa["state"].items():
        for slot, value in slots.items():
            assert torch.equal(sb["state"][key][slot], value), (key, slot)


@pytest.fixture
def saved(corpus, tmp_path):
    cfg = config_lib.load(None, tiny_overrides(corpus, tmp_path / "run"))
    model, optimizer = trained(cfg, seed=0)
    root = tmp_path / "run" / "checkpoints"
    staged = checkpoint.begin_staging(root, 7)
    part = sharded_checkpoint.save_shards(model, optimizer, staged / SHARDS)
    parts = {"optimizer": part, "data": {"epoch": 3}}
    path = checkpoint.save(root, 7, model, parts, cfg, load_tokenizer(cfg.text), staged=staged)
    return cfg, model, optimizer, path


def test_shards_restore_exactly_and_load_for_eval(saved):
    cfg, model, optimizer, path = saved
    assert path.name == "step_00000007" and not list(path.parent.glob(".tmp-*"))
    assert not (path / "model.safetensors").exists()
    loaded, tokenizer, _ = load_model(path)
    assert tokenizer is not None
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name

    fresh, fresh_optimizer = trained(cfg, seed=1)  # other weights and other moments
    data = {}

    class Data:
        def load_state_dict(self, state):
            data.update(state)

    step = checkpoint.restore(path, fresh, {"optimizer": fresh_optimizer, "data": Data()})
    assert step == 7 and data == {"epoch": 3}
    for name, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value), name
    assert_same_optimizer(optimizer, fresh_optimizer)


def test_consolidated_checkpoint_is_the_single_file_layout(saved, tmp_path):
    cfg, model, optimizer, path = saved
    assert main(["checkpoint", "consolidate", str(path)]) == 0  # in place
    assert (path / "model.safetensors").is_file() and not (path / SHARDS).exists()
    assert (path / "tokenizer").is_dir() and checkpoint.latest(path.parent) == path
    fresh, fresh_optimizer = trained(cfg, seed=1)
    checkpoint.restore(path, fresh, {"optimizer": fresh_optimizer})  # the plain loading path
    for name, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value), name
    assert_same_optimizer(optimizer, fresh_optimizer)
    assert main(["checkpoint", "consolidate", str(path)]) == 2  # already single files


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_metadata_that_would_run_code_is_refused(saved):
    *_, path = saved
    (path / SHARDS / ".metadata").write_bytes(pickle.dumps(_Exploit()))
    with pytest.raises(ConfigError, match="refusing to load .*posix.system"):
        load_model(path)


def test_search_fingerprints_the_shards(saved):
    from vlcontrast.search.build import weights_stamp

    *_, path = saved
    stamp = weights_stamp(path)
    shard = path / SHARDS / "__0_0.distcp"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1  # other weights, same size
    shard.write_bytes(bytes(data))
    assert weights_stamp(path) != stamp


def test_a_shard_that_cannot_be_written_is_one_clear_error(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    blocker = tmp_path / "not_a_directory"
    blocker.write_text("")
    with pytest.raises(sharded_checkpoint.ShardWriteError):
        sharded_checkpoint.save_shards(model, optimizer, blocker / SHARDS)
