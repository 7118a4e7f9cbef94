"""Sharded checkpoints (safetensors pieces + a JSON index) in one process, and resharding across
2 -> 1 and 1 -> 3 gloo processes (the FSDP run through the loop is tests/test_fsdp.py): the
pieces come back exactly onto a fresh model and optimizer, eval reads the weights,
consolidation gives the single-file layout and refuses a checkpoint that lacks a tensor, a
damaged index is named, and the earlier pickled format is read only by `checkpoint convert
--trust-pickled-metadata`: every other tool refuses it and its payload never runs."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import run_file, spawn_gloo, tiny_overrides
from vlcontrast import config as config_lib
from vlcontrast.cli import main
from vlcontrast.config import ConfigError
from vlcontrast.models import manifest
from vlcontrast.models.build import build_model
from vlcontrast.models.load import load_model
from vlcontrast.models.sharded_weights import INDEX, SHARDS
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


def save_sharded(cfg, model, optimizer, root, step=7):
    staged = checkpoint.begin_staging(root, step)
    part = sharded_checkpoint.save_shards(model, optimizer, staged / SHARDS)
    parts = {"optimizer": part, "data": {"epoch": 3}}
    return checkpoint.save(root, step, model, parts, cfg, load_tokenizer(cfg.text), staged=staged)


@pytest.fixture
def saved(corpus, tmp_path):
    cfg = config_lib.load(None, tiny_overrides(corpus, tmp_path / "run"))
    model, optimizer = trained(cfg, seed=0)
    path = save_sharded(cfg, model, optimizer, tmp_path / "run" / "checkpoints")
    return cfg, model, optimizer, path


def test_shards_restore_exactly_and_load_for_eval(saved):
    cfg, model, optimizer, path = saved
    assert path.name == "step_00000007" and not list(path.parent.glob(".tmp-*"))
    assert not (path / "model.safetensors").exists()
    assert sorted(p.name for p in (path / SHARDS).iterdir()) == [INDEX, "rank00000.safetensors"]
    assert manifest.layout(path) == "sharded"
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
    assert manifest.layout(path) == "single"
    assert (path / "tokenizer").is_dir() and checkpoint.latest(path.parent) == path
    fresh, fresh_optimizer = trained(cfg, seed=1)
    checkpoint.restore(path, fresh, {"optimizer": fresh_optimizer})  # the plain loading path
    for name, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value), name
    assert_same_optimizer(optimizer, fresh_optimizer)
    assert main(["checkpoint", "consolidate", str(path)]) == 2  # already single files


def edit_index(path, change) -> None:
    file = path / SHARDS / INDEX
    index = json.loads(file.read_text())
    change(index)
    file.write_text(json.dumps(index))


def test_consolidate_refuses_a_checkpoint_that_lacks_a_tensor(saved, tmp_path, capsys):
    """The index may list only what its files hold; a tensor of the model that it does not
    list is found before anything is written (a silent drop of logit_scale, before)."""
    *_, path = saved
    edit_index(path, lambda index: index["tensors"].pop("model/logit_scale"))
    out = tmp_path / "single"
    assert main(["checkpoint", "consolidate", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "missing ['logit_scale']" in err and err.count("\n") == 1, err
    assert not out.exists() and (path / SHARDS).is_dir()


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda e: e["pieces"][0].update(offset=[1, 0]), "outside the tensor"),
        (lambda e: e["pieces"].append(dict(e["pieces"][0])), "overlap"),
        (lambda e: e.update(shape=[e["shape"][0] + 1, e["shape"][1]]), "cover"),
        (lambda e: e["pieces"][0].update(file="rank00001.safetensors"), "does not list"),
        (lambda e: e.update(dtype="bytes"), "no known dtype"),  # a bytes item re-declared
        (lambda e: e.update(dtype="torch.float64"), "differs from the index"),
    ],
)
def test_a_damaged_index_is_named(saved, damage, message):
    *_, path = saved
    edit_index(path, lambda index: damage(index["tensors"][first_matrix(index)]))
    with pytest.raises(ConfigError, match=message):
        load_model(path)


def first_matrix(index) -> str:
    return next(k for k, e in index["tensors"].items() if len(e["shape"]) == 2)


def test_search_fingerprints_the_shards(saved):
    from vlcontrast.search.build import weights_stamp

    *_, path = saved
    stamp = weights_stamp(path)
    shard = path / SHARDS / "rank00000.safetensors"
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


# --- resharding: pieces written by W ranks read onto W' ranks ---------------------------------


def net() -> torch.nn.Module:
    torch.manual_seed(0)  # rows not divisible by 2 or 3: uneven and empty pieces
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Linear(7, 2), torch.nn.Linear(2, 1))


def reshard_worker(rank, world, init, directory, source):
    """``source`` empty: train 2 steps and write ``directory/{world}/sharded``; else read
    ``directory/{source}`` onto this world's shards (after a step on other data, so every
    value is overwritten) and save the full tensors that every rank now holds in total."""
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    torch.manual_seed(1 + bool(source))
    model = fully_shard(net())
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    for _ in range(1 if source else 2):
        model(torch.randn(4, 5)).square().sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    if not source:
        sharded_checkpoint.save_shards(model, optimizer, directory / str(world) / SHARDS)
    else:
        part = {
            "param_groups": sharded_checkpoint._sharded_states(model, optimizer)[1]["param_groups"]
        }
        sharded_checkpoint.load_shards(directory / source, model, optimizer, part)
        full = {f"model/{n}": p.full_tensor() for n, p in model.named_parameters()}
        for name, p in model.named_parameters():
            for slot in ("exp_avg", "exp_avg_sq"):
                full[f"optim/{name}/{slot}"] = optimizer.state[p][slot].full_tensor()
        if rank == 0:
            torch.save(full, directory / f"read_by_{world}.pt")
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow  # multi-process end to end: the README's command runs it
def test_shards_reshard_two_to_one_and_one_to_three_exactly(tmp_path):
    from vlcontrast.models.sharded_weights import read_tensors

    def spawn(world: int, source: str) -> None:  # a fresh rendezvous directory each time
        (rendezvous := tmp_path / f"rdv{world}{source}").mkdir()
        spawn_gloo(reshard_worker, world, rendezvous, tmp_path, source)

    for writers in (2, 1):
        spawn(writers, "")
    assert json.loads((tmp_path / "2" / SHARDS / INDEX).read_text())["files"] == [
        "rank00000.safetensors",
        "rank00001.safetensors",
    ]
    for readers, source in ((1, "2"), (3, "1")):
        spawn(readers, source)
        got = torch.load(tmp_path / f"read_by_{readers}.pt")
        saved = read_tensors(tmp_path / source)
        assert got and set(got) <= set(saved)
        for key, value in got.items():
            assert torch.equal(value, saved[key]), (readers, key)


# --- the earlier, pickled format ---------------------------------------------------------------


class Payload:
    """Unpickling this creates ``marker`` (a stand-in for any command)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def dotted_global(module: str, name: str, arg: str) -> bytes:
    """A protocol-4 pickle calling ``module``'s attribute path ``name`` with ``arg``: the C
    unpickler resolves dots, so a module-only allow-list let ('...filesystem', 'os.system')
    through."""

    def text(s: str) -> bytes:
        data = s.encode()
        return b"\x8c" + bytes([len(data)]) + data

    return b"\x80\x04" + text(module) + text(name) + b"\x93" + text(arg) + b"\x85R."


def legacy_checkpoint(cfg, model, optimizer, root, step=5):
    """A checkpoint as the earlier version wrote it under FSDP: DCP's files in sharded/ (a
    pickled .metadata), state.json of format 2, no manifest."""
    import torch.distributed.checkpoint as dcp

    path = save_sharded(cfg, model, optimizer, root, step)
    flat = {f"model/{k}": v for k, v in model.state_dict().items()}
    for name, slots in sharded_checkpoint._sharded_states(model, optimizer)[1]["state"].items():
        flat.update({f"optim/{name}/{slot}": v for slot, v in slots.items()})
    for file in (path / SHARDS).iterdir():
        file.unlink()
    (path / manifest.MANIFEST).unlink()
    dcp.save(flat, storage_writer=dcp.FileSystemWriter(str(path / SHARDS)), no_dist=True)
    return path


TORCH_MODULES = [
    "torch.distributed.checkpoint.metadata",
    "torch.distributed.checkpoint.filesystem",
    "torch.distributed.checkpoint.planner",
    "torch",
    "torch.serialization",
]


@pytest.mark.parametrize("module", TORCH_MODULES)
def test_every_tool_refuses_a_planted_metadata_and_nothing_runs(
    saved, corpus, tmp_path, capsys, module
):
    cfg, model, optimizer, _ = saved
    path = legacy_checkpoint(cfg, model, optimizer, tmp_path / "legacy")
    marker = tmp_path / "pwned"
    (path / SHARDS / ".metadata").write_bytes(dotted_global(module, "os.system", f"touch {marker}"))
    heldout = corpus["heldout_shards"]
    commands = [
        ["eval", "zeroshot", "--checkpoint", str(path), "--data", heldout],
        ["export", str(path), "--to", "safetensors", str(tmp_path / "out.safetensors")],
        [
            "index",
            "build",
            "--checkpoint",
            str(path),
            "--data",
            heldout,
            "--out",
            str(tmp_path / "i"),
        ],
        ["checkpoint", "consolidate", str(path)],
        ["checkpoint", "convert", str(path)],  # without the word that it is trusted
    ]
    for args in commands:
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert "pickle" in err and err.strip().count("\n") == 0, (args, err)
    overrides = tiny_overrides(corpus, tmp_path / "legacy")
    assert main(["train", run_file(tmp_path), *overrides, f"train.resume={path}"]) == 2
    assert "--trust-pickled-metadata" in capsys.readouterr().err
    assert not marker.exists()


def test_a_planted_sharded_dir_beside_the_weights_is_refused(saved, corpus, tmp_path, capsys):
    """Resume looked for sharded/ before model.safetensors: one added directory was enough.
    Now the manifest decides, and a file it does not list is refused, in every tool."""
    cfg, model, optimizer, path = saved
    assert main(["checkpoint", "consolidate", str(path)]) == 0
    marker = tmp_path / "pwned"
    (path / SHARDS).mkdir()
    (path / SHARDS / ".metadata").write_bytes(
        dotted_global("torch", "os.system", f"touch {marker}")
    )
    args = ["eval", "zeroshot", "--checkpoint", str(path), "--data", corpus["heldout_shards"]]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "does not list (sharded/.metadata)" in err and err.count("\n") == 1, err
    with pytest.raises(ConfigError, match="does not list"):
        checkpoint.restore(path, model, {"optimizer": optimizer})
    (path / manifest.MANIFEST).unlink()  # as an earlier version wrote it: both layouts
    with pytest.raises(ConfigError, match="both model.safetensors and sharded/"):
        load_model(path)
    assert not marker.exists()


def test_convert_with_the_flag_reads_the_earlier_format_once(saved, tmp_path, capsys):
    cfg, model, optimizer, _ = saved
    path = legacy_checkpoint(cfg, model, optimizer, tmp_path / "legacy")
    out = tmp_path / "converted"
    args = ["checkpoint", "convert", str(path), "--out", str(out), "--trust-pickled-metadata"]
    assert main(args) == 0
    assert manifest.layout(out) == "single"
    weights = load_file(out / "model.safetensors")
    for name, value in model.state_dict().items():
        assert torch.equal(weights[name], value), name
    fresh, fresh_optimizer = trained(cfg, seed=1)
    assert checkpoint.restore(out, fresh, {"optimizer": fresh_optimizer}) == 5
    assert_same_optimizer(optimizer, fresh_optimizer)
