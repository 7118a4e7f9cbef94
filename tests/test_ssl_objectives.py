"""Image-only objectives (SimCLR, MoCo v2/v3, BYOL, SimSiam, Barlow Twins): each loss against a
reference written in tests/references.py, the momentum update and schedule against their
formulas, MoCo's queue semantics, exact kill + resume through ``cli.main``, and 2- and 4-process
gloo steps against one process on the concatenated batch (loss and gradients)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from tests import distributed_ssl_case as case
from tests.conftest import crash_after, run_file, spawn_gloo, tiny_overrides
from tests.references import (
    textbook_barlow_twins,
    textbook_byol,
    textbook_moco_queue,
    textbook_moco_v3,
    textbook_nt_xent,
    textbook_supcon,
)
from vlcontrast import cli
from vlcontrast.losses.ssl import (
    barlow_twins_loss,
    cosine_momentum,
    moco_queue_loss,
    momentum_update,
)
from vlcontrast.objectives.byol import SimSiamObjective
from vlcontrast.objectives.moco import MoCoConfig, MoCoObjective
from vlcontrast.schema import ConfigError
from vlcontrast.train import checkpoint
from vlcontrast.train.metrics_log import read_jsonl


def unit(*shape, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=gen, dtype=dtype), dim=-1)


def test_moco_queue_loss_matches_the_paper_pseudocode():
    q, k, queue = unit(6, 8, seed=1), unit(6, 8, seed=2), unit(20, 8, seed=3)
    want = textbook_moco_queue(q, k, queue, 0.2)
    torch.testing.assert_close(moco_queue_loss(q, k, queue, 0.2), want, rtol=1e-12, atol=1e-12)
    # a key equal to its query with an orthogonal-ish queue: loss near log(1 + K e^{(c-1)/T})
    assert moco_queue_loss(q, q, queue, 0.05) < moco_queue_loss(q, k, queue, 0.05)


def test_barlow_twins_loss_matches_the_paper_pseudocode_and_its_closed_form():
    gen = torch.Generator().manual_seed(4)
    z_a, z_b = (
        torch.randn(16, 5, generator=gen, dtype=torch.float64),
        torch.randn(16, 5, generator=gen, dtype=torch.float64),
    )
    want = textbook_barlow_twins(z_a, z_b, 5e-3)
    torch.testing.assert_close(barlow_twins_loss(z_a, z_b, 5e-3), want, rtol=1e-10, atol=1e-12)
    # identical views with decorrelated (whitened) dimensions: c = I, loss 0
    white = torch.linalg.qr(torch.randn(16, 5, generator=gen, dtype=torch.float64))[0]
    white = white - white.mean(0)
    assert float(barlow_twins_loss(white, white, 5e-3)) < 0.05


def test_the_momentum_update_is_the_formula_and_the_schedule_runs_from_start_to_end():
    online, target = torch.nn.Linear(4, 3).double(), torch.nn.Linear(4, 3).double()
    before = {n: p.detach().clone() for n, p in target.named_parameters()}
    momentum_update(target, online, 0.9)
    for name, p in target.named_parameters():
        want = 0.9 * before[name] + 0.1 * dict(online.named_parameters())[name].detach()
        torch.testing.assert_close(p.detach(), want, rtol=0, atol=1e-15)
    assert cosine_momentum(0.99, 1.0, 0, 100) == pytest.approx(0.99)
    assert cosine_momentum(0.99, 1.0, 50, 100) == pytest.approx(0.995)
    assert cosine_momentum(0.99, 1.0, 100, 100) == pytest.approx(1.0)
    assert cosine_momentum(0.99, 1.0, 25, 100) == pytest.approx(
        1 - 0.01 * (math.cos(math.pi / 4) + 1) / 2
    )


def test_byol_momentum_is_indexed_as_its_code_does():
    """After step s of K the target moves with tau((s - 1) / K): 0.996 first, as BYOL's code
    (it used tau(s / K), one step ahead)."""
    model = case.model_for("byol")
    objective = case.make_objective("byol", model)  # 10 steps, 0.996 -> 1
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    for step, momentum in ((1, 0.996), (10, cosine_momentum(0.996, 1.0, 9, 10))):
        before = {n: p.detach().clone() for n, p in objective.target.named_parameters()}
        objective.after_step(model, step)
        for name, p in objective.target.named_parameters():
            online = dict(model.named_parameters())[name].detach()
            want = momentum * before[name] + (1 - momentum) * online
            torch.testing.assert_close(p.detach(), want, rtol=0, atol=1e-14, msg=name)


def moco_setup(queue_size=8, global_batch=4, fsdp=False):
    model = case.TinyImageModel(predictor=False)
    objective = MoCoObjective(MoCoConfig(queue_size=queue_size, temperature=0.2))
    cfg = SimpleNamespace(
        objective=SimpleNamespace(name="moco"),
        train=SimpleNamespace(steps=10, seed=0, fsdp=fsdp),
    )
    objective.setup(model, cfg, global_batch)
    return model, objective


def test_a_momentum_objective_under_fsdp_is_refused_with_the_alternative(monkeypatch):
    from vlcontrast import distributed

    monkeypatch.setattr(distributed, "world_size", lambda: 2)  # as under torchrun
    with pytest.raises(ConfigError, match="train.fsdp: objective 'moco' keeps a momentum copy"):
        moco_setup(fsdp=True)
    moco_setup(fsdp=False)  # DDP is fine


def test_moco_queue_order_wraparound_and_the_current_keys_are_never_negatives():
    model, objective = moco_setup(queue_size=8, global_batch=3 * 0 + 4)
    start = objective.queue.clone()
    batches = [{"images": torch.randn(4, 2, 6, dtype=torch.float64)} for _ in range(3)]
    keys = []
    for step, batch in enumerate(batches, 1):
        queue_before = objective.queue.clone()
        out = objective.outputs(model, batch)
        result = objective.loss(out, batch)
        # the loss used the queue as it was before this step: its own keys are not negatives
        want = textbook_moco_queue(out["q_a"], out["k_b"], queue_before, 0.2)
        torch.testing.assert_close(result["loss"], want, rtol=1e-10, atol=1e-12)
        assert not any(torch.allclose(row, k) for row in queue_before for k in out["k_b"])
        objective.after_step(model, step)
        keys.append(out["k_b"].detach())
    # 3 x 4 keys into 8 slots: slots 0-3 hold batch 3 (wrapped), 4-7 batch 2; pointer at 4
    torch.testing.assert_close(objective.queue[:4], keys[2])
    torch.testing.assert_close(objective.queue[4:], keys[1])
    assert int(objective.queue_ptr) == 4 and not torch.equal(objective.queue, start)


def test_moco_refuses_a_queue_that_is_not_a_multiple_of_the_global_batch():
    with pytest.raises(ConfigError, match="objective.moco.queue_size: 10 is not a multiple"):
        moco_setup(queue_size=10, global_batch=4)


def test_the_symmetric_moco_enqueues_once_per_step():
    model, objective = moco_setup(queue_size=8, global_batch=4)
    objective.cfg.symmetric = True
    batch = {"images": torch.randn(4, 2, 6, dtype=torch.float64)}
    out = objective.outputs(model, batch)
    objective.loss(out, batch)
    objective.after_step(model, 1)
    assert int(objective.queue_ptr) == 4  # 4 keys, not 8


def test_byol_and_simsiam_losses_are_the_papers():
    p_a, p_b, z_a, z_b = (unit(5, 4, seed=s) for s in range(4))
    from vlcontrast.objectives.byol import _symmetric

    torch.testing.assert_close(_symmetric(p_a, p_b, z_a, z_b), textbook_byol(p_a, p_b, z_a, z_b))
    simsiam = SimSiamObjective()
    loss = simsiam.loss({"p_a": p_a, "p_b": p_b, "z_a": z_a, "z_b": z_b}, {})["loss"]
    want = -((p_a * z_b).sum(1).mean() + (p_b * z_a).sum(1).mean()) / 2
    torch.testing.assert_close(loss, want)


@pytest.fixture(
    scope="module", params=[(2, None), (4, None), (2, [8, 4])], ids=["world2", "world4", "8+4"]
)
def distributed_results(request, tmp_path_factory):
    """Per-rank batches of equal size on 2 and 4 ranks, and 8 + 4 rows on 2 ranks (the last
    batch of an epoch): every objective must equal one process on the whole batch."""
    world, sizes = request.param
    tmp = tmp_path_factory.mktemp(f"ssl{world}")
    out = tmp / "results.pt"
    spawn_gloo(case.worker, world, tmp, str(out), sizes)
    return torch.load(out)


def split_bn_reference(world: int):
    """One process with ``model.bn_split=world``: the library's SimCLR objective on the whole
    batch, batch norm split into the groups that ``world`` devices would normalise."""
    from vlcontrast.models.split_bn import split_batch_norm

    model = split_batch_norm(case.model_for("simclr_bn"), world)
    objective = case.make_objective("simclr_bn", model)
    objective.bn_groups = world
    loss = objective(model, case.global_batch())["loss"]
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def reference(name: str):
    """One process, the whole batch, the textbook loss of ``name``."""
    model = case.model_for(name)
    images, labels = case.global_batch()["images"], case.global_batch()["labels"]
    a, b = model(images=images[:, 0]), model(images=images[:, 1])
    if name == "simclr":
        loss = textbook_nt_xent(a["img_emb"], b["img_emb"], 0.5)
    elif name == "mocov3":  # the momentum encoder starts as a copy: keys = detached embeddings
        loss = textbook_moco_v3(a["img_pred"], b["img_pred"], a["img_emb"], b["img_emb"], 0.2)
    elif name == "supcon":
        emb = torch.cat([a["img_emb"], b["img_emb"]])
        loss = textbook_supcon(emb, torch.cat([labels, labels]), 0.1)
    elif name == "byol":
        loss = textbook_byol(a["img_pred"], b["img_pred"], a["img_emb"], b["img_emb"])
    else:
        loss = textbook_barlow_twins(a["img_proj"], b["img_proj"], 5e-3)
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", case.CASES)
def test_distributed_steps_equal_the_single_process_step(distributed_results, name):
    """Every objective; and ``simclr_bn``: per-device batch norm under DDP equals one process
    with split batch norm (``model.bn_split``), so a CPU run reproduces multi-GPU statistics."""
    if name not in distributed_results:
        pytest.skip("per-device batch norm is compared on even splits")
    got = distributed_results[name]
    world = distributed_results["world"]
    want_loss, want_grads = split_bn_reference(world) if name == "simclr_bn" else reference(name)
    torch.testing.assert_close(got["loss"], want_loss, rtol=1e-10, atol=1e-12)
    assert set(got["grads"]) == set(want_grads)
    for param, want in want_grads.items():
        torch.testing.assert_close(got["grads"][param], want, rtol=1e-9, atol=1e-12, msg=param)


def image_run(corpus, out_dir, objective="moco", steps=4):
    overrides = tiny_overrides(corpus, out_dir, steps)
    overrides = [o for o in overrides if not o.startswith(("text.", "model.embed_dim"))]
    overrides += [
        "model.kind=image",
        "model.embed_dim=16",
        "model.proj_layers=2",
        f"objective.name={objective}",
        "objective.moco.queue_size=32",
        "views.preset=small",
    ]
    return ["train", run_file(out_dir), *overrides]


def test_moco_queue_and_momentum_encoder_are_bit_identical_after_kill_and_resume(
    corpus, tmp_path, monkeypatch
):
    full, parted = tmp_path / "full", tmp_path / "parted"
    assert cli.main(image_run(corpus, full)) == 0
    restore = crash_after(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        cli.main(image_run(corpus, parted))
    restore()
    assert cli.main([*image_run(corpus, parted), "train.resume=latest"]) == 0

    def losses(run):
        return {
            r["step"]: r["train/loss"]
            for r in read_jsonl(run / "metrics.jsonl")
            if "train/loss" in r
        }

    assert losses(parted) == losses(full) and sorted(losses(full)) == [1, 2, 3, 4]
    a, b = (checkpoint.latest(run / "checkpoints") for run in (full, parted))
    state_a = checkpoint.load_state(a)["parts"]["objective"]
    state_b = checkpoint.load_state(b)["parts"]["objective"]
    assert {"queue", "queue_ptr"} <= set(state_a) and any(k.startswith("target.") for k in state_a)
    for name in state_a:
        assert torch.equal(state_a[name], state_b[name]), name
    assert int(state_a["queue_ptr"]) == (4 * 16) % 32
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert all(torch.equal(wa[n], wb[n]) for n in wa)


@pytest.mark.parametrize(
    "objective, optimizer",
    [
        ("simclr", "lars"),
        ("mocov3", "adamw"),
        ("byol", "lars"),
        ("simsiam", "sgd"),
        ("barlow_twins", "lars"),
    ],
)
def test_every_image_objective_trains_through_the_cli(corpus, tmp_path, objective, optimizer):
    args = [
        *image_run(corpus, tmp_path, objective, steps=2),
        "model.predictor_hidden=32",
        f"optim.name={optimizer}",
    ]
    assert cli.main(args) == 0
    rows = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if "train/loss" in r]
    assert len(rows) == 2 and all(math.isfinite(r["train/loss"]) for r in rows)


def test_predictor_objectives_without_a_predictor_and_image_objectives_on_a_dual_model(
    corpus, tmp_path, capsys
):
    assert cli.main(image_run(corpus, tmp_path / "a", "byol")) == 2
    assert "model.predictor_hidden: objective 'byol'" in capsys.readouterr().err
    dual = [o for o in image_run(corpus, tmp_path / "b", "simclr") if o != "model.kind=image"]
    assert cli.main([*dual, f"text.tokenizer={corpus['tokenizer']}"]) == 2
    assert "set model.kind=image" in capsys.readouterr().err


def test_labels_for_supcon_are_read_from_the_shards_and_bad_ones_counted():
    import random

    from tests.test_views import jpeg
    from vlcontrast.data.decode import Decoder
    from vlcontrast.data.image import CropResize
    from vlcontrast.data.skip import SkipSample

    decoder = Decoder(CropResize(8), caption_key="", label_key="cls")
    raw = {"__key__": "a", "__url__": "u", "jpg": jpeg(), "cls": b"7\n"}
    assert decoder(raw, random.Random(0))["label"] == 7
    for broken, reason in (({}, "missing_label"), ({"cls": b"seven"}, "bad_label")):
        sample = {k: v for k, v in raw.items() if k != "cls"} | broken
        with pytest.raises(SkipSample) as caught:
            decoder(sample, random.Random(0))
        assert caught.value.reason == reason


def test_slip_is_clip_plus_simclr_on_the_image_head_and_trains_through_the_cli(
    corpus, tmp_path, capsys
):
    from tests.references import textbook_clip_loss
    from vlcontrast import config as config_lib
    from vlcontrast.models import build_model
    from vlcontrast.objectives.slip import SLIPObjective

    overrides = [
        *tiny_overrides(corpus, tmp_path, steps=2),
        "objective.name=slip",
        "views.preset=simclr",
        "model.ssl_head_hidden=32",
        "model.ssl_head_dim=8",
    ]
    cfg = config_lib.resolve(config_lib.load(None, overrides))
    torch.manual_seed(0)
    model = build_model(cfg).eval()  # no dropout: two forwards must agree
    objective = SLIPObjective()
    objective.setup(model, cfg, 4)
    gen = torch.Generator().manual_seed(0)
    batch = {
        "images": torch.randint(0, 256, (4, 3, 3, 32, 32), generator=gen, dtype=torch.uint8),
        "input_ids": torch.randint(5, 60, (4, 7), generator=gen),
        "attention_mask": torch.ones(4, 7, dtype=torch.long),
    }
    out = objective.outputs(model, batch)
    got = objective.loss(out, batch)
    crops = torch.cat([batch["images"][:, k] for k in range(3)])
    full = model(images=crops, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    want = textbook_clip_loss(full["img_emb"][:4], full["txt_emb"], full["logit_scale"])
    want = want + textbook_nt_xent(full["img_ssl"][4:8], full["img_ssl"][8:], 0.1)
    torch.testing.assert_close(got["loss"], want, rtol=1e-5, atol=1e-6)

    assert cli.main(["train", run_file(tmp_path), *overrides]) == 0
    rows = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if "train/loss" in r]
    assert len(rows) == 2 and all("train/ssl_loss" in r and "train/clip_loss" in r for r in rows)
    no_head = [o for o in overrides if not o.startswith("model.ssl_head")]
    assert cli.main(["train", run_file(tmp_path), *no_head, f"train.output_dir={tmp_path}/b"]) == 2
    assert "model.ssl_head_hidden: objective 'slip'" in capsys.readouterr().err


def test_split_batch_norm_normalises_each_slice_apart_and_averages_the_statistics():
    from torch import nn

    from vlcontrast.models.split_bn import split_batch_norm

    torch.manual_seed(0)
    plain = nn.BatchNorm2d(3)
    with torch.no_grad():
        plain.weight.uniform_(0.5, 1.5)
        plain.bias.uniform_(-0.5, 0.5)
    x = torch.randn(8, 3, 4, 4) * 3 + 1
    groups = [nn.BatchNorm2d(3) for _ in range(2)]
    for g in groups:
        g.load_state_dict(plain.state_dict())
    split = split_batch_norm(nn.Sequential(plain), 2)[0]
    out = split(x)
    want = torch.cat([groups[0](x[:4]), groups[1](x[4:])])
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)
    mean = (groups[0].running_mean + groups[1].running_mean) / 2
    torch.testing.assert_close(split.running_mean, mean)
    split.eval()
    groups[0].eval()
    groups[0].running_mean.copy_(split.running_mean)
    groups[0].running_var.copy_(split.running_var)
    torch.testing.assert_close(split(x), groups[0](x))  # eval: ordinary batch norm
    assert set(split.state_dict()) == set(plain.state_dict())  # checkpoints load either way


def test_a_knn_monitor_runs_during_image_only_training(corpus, tmp_path):
    heldout = corpus["heldout_shards"]
    monitor = f"[{{kind: knn, data: '{heldout}', train_data: '{heldout}', k: 5}}]"
    args = [
        *image_run(corpus, tmp_path, "simclr", steps=4),
        "eval.every=2",
        f"eval.evaluators={monitor}",
        "eval.num_workers=0",
    ]
    assert cli.main(args) == 0
    rows = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if "eval/knn/top1" in r]
    assert [r["step"] for r in rows] == [2, 4] and all(0 <= r["eval/knn/top1"] <= 1 for r in rows)
