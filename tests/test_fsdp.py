"""FSDP2 through the real loop on 2 gloo processes: the losses and the model EMA (averaged shard by
shard) equal DDP's, each rank writes its
shards of the checkpoint (which eval loads in one process and `vlcontrast checkpoint
consolidate` turns into single files), and a killed FSDP run resumes exactly, from its shards
and from the consolidated files, EMA included; a DDP run resumes from the shards as well."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from tests import distributed_train_case as case
from tests.conftest import start_ranks, tiny_overrides, tiny_vit
from vlcontrast.cli import main
from vlcontrast.models.load import load_model
from vlcontrast.train import checkpoint
from vlcontrast.train.metrics_log import read_jsonl


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(corpus, out, *extra, crash: int = 0) -> None:
    overrides = [
        *tiny_overrides(corpus, out, steps=4),
        *tiny_vit(),
        "data.batch_size=8",
        "optim.warmup_steps=1",
        "train.ema=0.5",  # every run keeps an EMA: DDP's and FSDP's must agree and resume
        *extra,
    ]
    for attempt in range(2):
        try:
            start_ranks(case.worker, 2, 2, "", free_port(), overrides, crash)
            return
        except mp.ProcessExitedException as err:
            if crash:  # the simulated preemption may take gloo down with it
                return
            if err.signal_name is None or attempt:
                raise
            # a teardown abort (gloo, rarely, on this 2-core machine): once more; a resumed
            # run resumes again from its newest checkpoint, which must give the same losses
            if not any(o.startswith("train.resume=") for o in overrides):
                overrides = [*overrides, "train.overwrite=true"]


def losses(run_dir) -> dict[int, float]:
    return {
        r["step"]: r["train/loss"]
        for r in read_jsonl(run_dir / "metrics.jsonl")
        if "train/loss" in r
    }


@pytest.mark.slow  # multi-process end to end: the README's command runs it
def test_fsdp_trains_like_ddp_and_resumes_exactly(corpus, tmp_path):
    ddp, sharded, parted = tmp_path / "ddp", tmp_path / "fsdp", tmp_path / "parted"
    evaluate = f"eval.evaluators=[{{kind: zeroshot, data: '{corpus['heldout_shards']}'}}]"
    run(corpus, ddp, evaluate)
    run(corpus, sharded, "train.fsdp=true", evaluate)
    evals = [
        [r for r in read_jsonl(d / "metrics.jsonl") if "eval/zeroshot/top1" in r]
        for d in (ddp, sharded)
    ]
    assert len(evals[0]) == 1 and evals[1][0]["eval/zeroshot/top1"] == pytest.approx(
        evals[0][0]["eval/zeroshot/top1"], abs=1 / 64
    )  # evaluation under FSDP (64 held-out images; a near-tie may flip one)
    want, got = losses(ddp), losses(sharded)
    assert sorted(got) == [1, 2, 3, 4]
    for step, loss in want.items():
        assert got[step] == pytest.approx(loss, rel=1e-5, abs=1e-6), step
    a = load_file(checkpoint.latest(ddp / "checkpoints") / "model.safetensors")
    saved = checkpoint.latest(sharded / "checkpoints")
    assert sorted(p.name for p in (saved / "sharded").iterdir()) == [
        "index.json",
        "rank00000.safetensors",
        "rank00001.safetensors",
    ]  # one file per rank, and no rank wrote the whole model
    assert not (saved / "model.safetensors").exists()
    b = weights(saved)  # read in this process, without a process group
    assert set(a) == set(b)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5, msg=name)
    ema_ddp, ema_fsdp = ema(checkpoint.latest(ddp / "checkpoints")), ema(saved)
    assert set(ema_ddp) == set(a) and any(not torch.equal(ema_fsdp[k], b[k]) for k in b)
    for name in a:  # the FSDP run's EMA (averaged shard by shard) is the DDP run's
        torch.testing.assert_close(ema_fsdp[name], ema_ddp[name], rtol=1e-4, atol=1e-5)
    ema_model, _, _ = load_model(saved, weights="ema")  # --weights ema on an FSDP checkpoint
    for name, value in ema_model.state_dict().items():
        assert torch.equal(value, ema_fsdp[name]), name
    single = tmp_path / "single"
    assert main(["checkpoint", "consolidate", str(saved), "--out", str(single)]) == 0
    consolidated = load_file(single / "model.safetensors")
    assert set(consolidated) == set(a) and all(torch.equal(consolidated[k], b[k]) for k in b)

    run(corpus, parted, "train.fsdp=true", crash=3)  # killed after the step-2 checkpoint
    step2 = checkpoint.latest(parted / "checkpoints")
    assert step2.name == "step_00000002" and (step2 / "sharded").is_dir()
    run(corpus, parted, "train.fsdp=true", "train.resume=latest")
    assert losses(parted) == got  # bit-exact: weights, optimizer, data and RNG restored
    c = weights(checkpoint.latest(parted / "checkpoints"))
    ema_parted = ema(checkpoint.latest(parted / "checkpoints"))
    for name in b:
        assert torch.equal(c[name], b[name]), name
        assert torch.equal(ema_parted[name], ema_fsdp[name]), name  # the EMA resumed exactly

    # a DDP run resumes from the shards too (DDP's sums differ from FSDP's in the last bits)
    plain = tmp_path / "plain"
    run(corpus, plain, f"train.resume={step2}")
    assert losses(plain) == pytest.approx({3: got[3], 4: got[4]}, rel=1e-5)

    # the consolidated step 2 resumes the same way, into full single-file checkpoints
    joined = tmp_path / "joined"
    assert main(["checkpoint", "consolidate", str(step2), "--out", str(joined)]) == 0
    again = tmp_path / "again"
    run(
        corpus,
        again,
        "train.fsdp=true",
        "train.sharded_checkpoints=false",
        f"train.resume={joined}",
    )
    assert losses(again) == {3: got[3], 4: got[4]}
    d = load_file(checkpoint.latest(again / "checkpoints") / "model.safetensors")
    for name in b:
        assert torch.equal(d[name], b[name]), name


def ema(saved) -> dict[str, torch.Tensor]:
    return checkpoint.load_state(saved)["parts"]["ema"]["weights"]


def weights(saved) -> dict[str, torch.Tensor]:
    model, _, _ = load_model(saved)
    return model.state_dict()
