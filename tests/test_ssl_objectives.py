"""Image-only objectives (SimCLR, MoCo v2/v3, BYOL, SimSiam, Barlow Twins): each loss against a
reference written in tests/references.py, the momentum update and schedule against their
formulas, MoCo's queue semantics, exact kill + resume through ``cli.main``, and 2- and 4-process
gloo steps against one process on the concatenated batch (loss and gradients)."""

from __future__ import annotations

import math
from pathlib import Path
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
from vlcontrast.config import ObjectiveConfig
from vlcontrast.losses.ssl import (
    barlow_twins_loss,
    cosine_momentum,
    moco_queue_loss,
    momentum_update,
)
from vlcontrast.objectives.base import step_loss
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
    objective = case.make_objective("byol", case.model_for("byol"))  # 10 steps, 0.996 -> 1
    with torch.no_grad():
        for p in objective.online().parameters():
            p.add_(1.0)
    assert {n for n, _ in objective.target.named_parameters()} == {
        n for n, _ in objective.online().named_parameters()
    }  # backbone and projector; no predictor, as BYOL's target
    for step, momentum in ((1, 0.996), (10, cosine_momentum(0.996, 1.0, 9, 10))):
        before = {n: p.detach().clone() for n, p in objective.target.named_parameters()}
        objective.after_step(step)
        for name, p in objective.target.named_parameters():
            online = dict(objective.online().named_parameters())[name].detach()
            want = momentum * before[name] + (1 - momentum) * online
            torch.testing.assert_close(p.detach(), want, rtol=0, atol=1e-14, msg=name)


def moco_setup(queue_size=8, global_batch=4, fsdp=False):
    model = case.TinyImageModel()
    projector = case.heads(bn=False)["projector"]
    objective = MoCoObjective(
        MoCoConfig(queue_size=queue_size, temperature=0.2, projector=projector)
    )
    cfg = SimpleNamespace(
        objective=SimpleNamespace(name="moco"),
        train=SimpleNamespace(steps=10, seed=0, fsdp=fsdp),
    )
    objective.setup(model, cfg, global_batch)
    return model, objective


def test_a_queue_longer_than_the_data_gets_a_warning(capsys):
    """MoCo's 65536 keys are 5% of ImageNet; on 200 images each image's own older keys would
    be among its negatives."""
    objective = MoCoObjective(
        MoCoConfig(queue_size=64, projector=case.heads(bn=False)["projector"])
    )
    objective.epoch_steps = 5  # 20 images an epoch at a global batch of 4
    cfg = SimpleNamespace(train=SimpleNamespace(steps=10, seed=0, fsdp=False))
    objective.setup(case.TinyImageModel(), cfg, 4)
    out = capsys.readouterr().out
    assert "warning: objective.moco.queue_size=64 keys, more than the 20 images" in out
    assert "at most 20 (e.g. 8)" in out
    moco_setup(queue_size=8)  # epoch length unknown, or a queue shorter than it: no warning
    objective = MoCoObjective(
        MoCoConfig(queue_size=16, projector=case.heads(bn=False)["projector"])
    )
    objective.epoch_steps = 5
    objective.setup(case.TinyImageModel(), cfg, 4)
    assert "warning" not in capsys.readouterr().out


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
        out = objective.outputs(batch)
        result = objective.loss(out, batch)
        # the loss used the queue as it was before this step: its own keys are not negatives
        want = textbook_moco_queue(out["q_a"], out["k_b"], queue_before, 0.2)
        torch.testing.assert_close(result["loss"], want, rtol=1e-10, atol=1e-12)
        assert not any(torch.allclose(row, k) for row in queue_before for k in out["k_b"])
        objective.after_step(step)
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
    out = objective.outputs(batch)
    objective.loss(out, batch)
    objective.after_step(1)
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


def split_bn_reference(name: str, world: int):
    """One process with ``model.bn_split=world``: the library's task on the whole batch, batch
    norm split into the groups that ``world`` devices would normalise (MoCo v2: its keys in the
    shuffled order whose slices the devices encode)."""
    from vlcontrast.models.split_bn import split_batch_norm

    task = split_batch_norm(case.make_objective(name, case.model_for(name)), world)
    task.bn_groups = world
    loss = step_loss(task, case.global_batch())["loss"]
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in task.named_parameters() if p.grad is not None}


def encode(task, images):
    """(projection, unit-norm projection, unit-norm prediction) written out by hand."""
    proj = task.projector(task.model(images=images)["img_feat"])
    pred = F.normalize(task.predictor(proj), dim=-1) if hasattr(task, "predictor") else None
    return proj, F.normalize(proj, dim=-1), pred


def reference(name: str, world: int):
    """One process, the whole batch, the textbook loss of ``name`` on outputs computed by hand
    (the momentum encoder starts as a copy: keys and targets are the detached embeddings).
    ``byol_bn``: one forward per view and per device's slice, each normalising over its own
    rows, as BYOL's code on ``world`` devices does."""
    task = case.make_objective(name, case.model_for(name))
    images, labels = case.global_batch()["images"], case.global_batch()["labels"]
    if name == "byol_bn":
        slices = images.chunk(world)
        (_, z_a, p_a), (_, z_b, p_b) = (
            [
                torch.cat(parts)
                for parts in zip(*[encode(task, x[:, v]) for x in slices], strict=True)
            ]
            for v in (0, 1)
        )
        loss = textbook_byol(p_a, p_b, z_a.detach(), z_b.detach())
    elif name == "probe":
        emb = [
            F.normalize(task.head(task.model(images=images[:, v])["img_feat"]), dim=-1)
            for v in (0, 1)
        ]
        loss = textbook_nt_xent(emb[0], emb[1], 0.5)
    else:
        (proj_a, emb_a, pred_a), (proj_b, emb_b, pred_b) = (
            encode(task, images[:, v]) for v in (0, 1)
        )
        if name == "simclr":
            loss = textbook_nt_xent(emb_a, emb_b, 0.5)
        elif name == "mocov3":
            loss = textbook_moco_v3(pred_a, pred_b, emb_a.detach(), emb_b.detach(), 0.2)
        elif name == "supcon":
            loss = textbook_supcon(torch.cat([emb_a, emb_b]), torch.cat([labels, labels]), 0.1)
        elif name == "byol":
            loss = textbook_byol(pred_a, pred_b, emb_a.detach(), emb_b.detach())
        else:
            loss = textbook_barlow_twins(proj_a, proj_b, 5e-3)
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in task.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", case.CASES)
def test_distributed_steps_equal_the_single_process_step(distributed_results, name):
    """Every objective, its heads' gradients included (``probe``: a test-fixture objective with
    its own head and buffer); ``simclr_bn``: per-device batch norm under DDP equals one process
    with split batch norm (``model.bn_split``), so a CPU run reproduces multi-GPU statistics;
    ``byol_bn``: one forward per view, batch norm per view and device, as BYOL's code;
    ``moco_bn``: MoCo v2's shuffle BN across devices (each encodes a random slice of the global
    batch's keys) equals one process whose split batch norm takes the same slices."""
    if name not in distributed_results:
        pytest.skip("per-device batch norm is compared on even splits")
    got = distributed_results[name]
    world = distributed_results["world"]
    if name in ("simclr_bn", "moco_bn"):
        want_loss, want_grads = split_bn_reference(name, world)
    else:
        want_loss, want_grads = reference(name, world)
    assert any(not n.startswith("model.") for n in want_grads)  # the heads took gradients
    torch.testing.assert_close(got["loss"], want_loss, rtol=1e-10, atol=1e-12)
    assert set(got["grads"]) == set(want_grads)
    for param, want in want_grads.items():
        torch.testing.assert_close(got["grads"][param], want, rtol=1e-9, atol=1e-12, msg=param)


def image_run(corpus, out_dir, objective="moco", steps=4):
    """A tiny image-only run; every method's heads small (projector 16 -> 16, predictor 32)."""
    overrides = tiny_overrides(corpus, out_dir, steps)
    overrides = [o for o in overrides if not o.startswith(("text.", "model.embed_dim"))]
    overrides += [
        "model.kind=image",
        f"objective.name={objective}",
        "objective.moco.queue_size=32",
        "views.preset=small",
    ]
    settings = getattr(ObjectiveConfig(), objective, None)
    if hasattr(settings, "projector"):
        overrides += [f"objective.{objective}.projector={{layers: 2, hidden: 16, dim: 16}}"]
    if hasattr(settings, "predictor"):
        overrides += [f"objective.{objective}.predictor.hidden=32"]
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
    args = [*image_run(corpus, tmp_path, objective, steps=2), f"optim.name={optimizer}"]
    assert cli.main(args) == 0
    rows = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if "train/loss" in r]
    assert len(rows) == 2 and all(math.isfinite(r["train/loss"]) for r in rows)


def test_an_image_objective_on_a_dual_model_is_refused(corpus, tmp_path, capsys):
    dual = [o for o in image_run(corpus, tmp_path / "b", "simclr") if o != "model.kind=image"]
    assert cli.main([*dual, f"text.tokenizer={corpus['tokenizer']}"]) == 2
    assert "set model.kind=image" in capsys.readouterr().err


def test_the_heads_are_the_papers_and_belong_to_the_method(corpus, tmp_path):
    """Projector and predictor as each reference builds them; none of it in the model."""
    from torch import nn

    from vlcontrast import config as config_lib
    from vlcontrast.models import build_model
    from vlcontrast.objectives import build_objective

    def layers(head):
        return [
            (type(m).__name__, getattr(m, "out_features", None), getattr(m, "affine", None))
            for m in head
        ]

    cfg = config_lib.load(None, ["model.kind=image", "image.model=test_resnet"])
    model = build_model(cfg)
    width = model.image.num_features
    assert not any(isinstance(m, nn.Linear) for m in model.modules())  # the backbone only
    want = {
        "simclr": [
            ("Linear", width, None),
            ("BatchNorm1d", None, True),
            ("ReLU", None, None),
            ("Linear", 128, None),
            ("BatchNorm1d", None, True),
        ],
        "moco": [("Linear", width, None), ("ReLU", None, None), ("Linear", 128, None)],
        "simsiam": [("Linear", 2048, None), ("BatchNorm1d", None, True), ("ReLU", None, None)] * 2
        + [("Linear", 2048, None), ("BatchNorm1d", None, False)],
    }
    for name, layout in want.items():
        cfg.objective.name = name
        task = build_objective(cfg.objective)
        task.setup(
            build_model(cfg),
            SimpleNamespace(model=cfg.model, train=cfg.train, objective=cfg.objective),
            256,
        )
        assert layers(task.projector) == layout, name
    assert [type(m).__name__ for m in task.predictor] == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert task.predictor[0].out_features == 512 and task.predictor[-1].out_features == 2048


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


def test_slip_is_clip_plus_simclr_on_the_image_head_and_trains_through_the_cli(corpus, tmp_path):
    from tests.references import textbook_clip_loss
    from vlcontrast import config as config_lib
    from vlcontrast.models import build_model
    from vlcontrast.objectives.slip import SLIPObjective

    overrides = [
        *tiny_overrides(corpus, tmp_path, steps=2),
        "objective.name=slip",
        "views.preset=simclr",
        "objective.slip.head={hidden: 32, dim: 8}",
    ]
    cfg = config_lib.resolve(config_lib.load(None, overrides))
    torch.manual_seed(0)
    model = build_model(cfg)
    objective = SLIPObjective(cfg.objective.slip)
    objective.setup(model, cfg, 4)
    objective.eval()  # no dropout, running batch-norm statistics: two forwards must agree
    gen = torch.Generator().manual_seed(0)
    batch = {
        "images": torch.randint(0, 256, (4, 3, 3, 32, 32), generator=gen, dtype=torch.uint8),
        "input_ids": torch.randint(5, 60, (4, 7), generator=gen),
        "attention_mask": torch.ones(4, 7, dtype=torch.long),
    }
    got = objective.loss(objective(batch), batch)
    clip = model(images=batch["images"][:, 0], input_ids=batch["input_ids"])
    ssl = [
        F.normalize(objective.head(model(images=batch["images"][:, k])["img_feat"]), dim=-1)
        for k in (1, 2)
    ]
    want = textbook_clip_loss(clip["img_emb"], clip["txt_emb"], clip["logit_scale"])
    want = want + textbook_nt_xent(ssl[0], ssl[1], 0.1)
    torch.testing.assert_close(got["loss"], want, rtol=1e-5, atol=1e-6)
    assert not any(k.startswith("ssl_head") for k in model.state_dict())  # the task's head

    assert cli.main(["train", run_file(tmp_path), *overrides]) == 0
    rows = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if "train/loss" in r]
    assert len(rows) == 2 and all("train/ssl_loss" in r and "train/clip_loss" in r for r in rows)


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


def test_a_new_objective_with_its_own_head_and_buffer_trains_and_resumes_bit_exactly(
    corpus, tmp_path, monkeypatch
):
    """The task design's promise: ``tests/probe_objective.py`` (one file) plus one registry
    entry trains (its head's weights change), and its head, its buffer and the model come back
    bit-identical after a kill + resume. Its 2- and 4-process DDP exactness, head included, is
    the ``probe`` case of test_distributed_steps_equal_the_single_process_step."""
    from vlcontrast import objectives

    monkeypatch.setitem(objectives.OBJECTIVES, "probe", "tests.probe_objective:ProbeObjective")
    full, parted = tmp_path / "full", tmp_path / "parted"
    assert cli.main(image_run(corpus, full, "probe")) == 0
    restore = crash_after(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        cli.main(image_run(corpus, parted, "probe"))
    restore()
    assert cli.main([*image_run(corpus, parted, "probe"), "train.resume=latest"]) == 0

    def losses(run):
        rows = read_jsonl(run / "metrics.jsonl")
        return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}

    assert losses(parted) == losses(full) and sorted(losses(full)) == [1, 2, 3, 4]
    steps = checkpoint.all_checkpoints(full / "checkpoints")
    first, last = (checkpoint.load_state(p)["parts"]["objective"] for p in steps[-2:])
    assert set(last) == {"head.weight", "head.bias", "center"}
    assert not torch.equal(first["head.weight"], last["head.weight"])  # the head trains
    assert float(last["center"].abs().sum()) > 0  # the buffer moved
    resumed = checkpoint.load_state(checkpoint.latest(parted / "checkpoints"))["parts"]
    for name, value in last.items():
        assert torch.equal(resumed["objective"][name], value), name
    assert not any(k.startswith("head") for k in load_file(steps[-1] / "model.safetensors"))


FORMAT2 = Path(__file__).parent / "data" / "format2"


@pytest.mark.parametrize("name", ["byol", "moco", "slip"])
def test_checkpoints_written_before_tasks_load_for_inference_and_resume(corpus, tmp_path, name):
    """tests/data/format2 holds checkpoints of the layout before methods owned their heads
    (heads in model.safetensors, the momentum target a copy of the whole model, the heads'
    settings under model.*). They load for inference (the heads left out) and resume with
    every head and target tensor where the task keeps it now."""
    from vlcontrast.models.load import load_model
    from vlcontrast.objectives import build_objective
    from vlcontrast.train.task_state import TaskState

    path = FORMAT2 / name
    model, _, cfg = load_model(path)
    old = load_file(path / "model.safetensors")
    for key, value in model.state_dict().items():
        assert torch.equal(value, old[key]), key
    with torch.no_grad():
        assert model(images=torch.zeros(2, 3, 32, 32, dtype=torch.uint8))["img_emb"].shape[0] == 2

    cfg.train.steps = 4
    task = build_objective(cfg.objective)
    task.setup(model.train(), cfg, 16)
    checkpoint.restore(path, model, {"objective": TaskState(task)})
    saved = checkpoint.load_state(path)["parts"].get("objective", {})
    renames = {"image.proj.": "projector.", "predictor.": "predictor.", "ssl_head.": "head."}
    for key, value in old.items():
        for before, after in renames.items():
            if key.startswith(before) and key not in model.state_dict():
                assert torch.equal(task.state_dict()[after + key[len(before) :]], value), key
    for key, value in saved.items():
        new = key.replace("target.image.trunk.", "target.model.image.trunk.")
        new = new.replace("target.image.proj.", "target.projector.")
        if not key.startswith("target.predictor."):
            assert torch.equal(task.state_dict()[new], value), key


@pytest.mark.parametrize("name", ["byol", "slip"])
def test_a_run_of_the_earlier_layout_resumes_through_the_cli(corpus, tmp_path, name):
    """``train`` with a format2 checkpoint's own config.json as the run file resumes it: heads,
    momentum target and optimizer state (in the same parameter order) come back."""
    path = FORMAT2 / name
    args = [
        "train",
        str(path / "config.json"),
        f"data.train_shards={corpus['train_shards']}",
        f"text.tokenizer={path / 'tokenizer'}",
        "train.steps=3",
        f"train.output_dir={tmp_path}",
        f"train.resume={path}",
        "eval.evaluators=[]",
    ]
    assert cli.main(args if name == "slip" else [a for a in args if "tokenizer" not in a]) == 0
    rows = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if "train/loss" in r]
    assert [r["step"] for r in rows] == [3] and math.isfinite(rows[0]["train/loss"])


def test_view_groups_of_two_sizes_flow_through_the_loader_into_a_task(
    corpus, tmp_path, monkeypatch
):
    """2 views at 32 px and 6 at 16 px from one decode per image, one tensor per group, the
    same with 0 and 2 workers; a task reads them and its run resumes bit-exactly."""
    from tests.data_helpers import batches
    from vlcontrast import config as config_lib
    from vlcontrast import objectives
    from vlcontrast.data.bad_data import BadData
    from vlcontrast.data.shards import DataPosition
    from vlcontrast.train.data_setup import build_train_data

    monkeypatch.setitem(objectives.OBJECTIVES, "multicrop", "tests.probe_objective:MultiCropProbe")

    def run_args(out):
        args = image_run(corpus, out, "multicrop") + ["image.model=test_resnet"]
        return [a for a in args if not a.startswith("image.model_kwargs")]

    args = run_args(tmp_path / "full")
    cfg = config_lib.load(None, args[2:])
    dataset, _ = build_train_data(cfg, None)

    def two_streams() -> DataPosition:
        position = DataPosition()
        position.reset(2)  # the order depends on the streams, not on the workers
        return position

    one, two = (batches(dataset, w, two_streams(), 2, BadData()) for w in (0, 2))
    for a, b in zip(one, two, strict=True):
        assert set(a["views"]) == {"global", "local"} and "images" not in a
        assert a["views"]["global"].shape == (16, 2, 3, 32, 32)
        assert a["views"]["local"].shape == (16, 6, 3, 16, 16)
        assert all(torch.equal(a["views"][k], b["views"][k]) for k in a["views"])
    assert not torch.equal(one[0]["views"]["local"][:, 0], one[0]["views"]["local"][:, 1])

    full, parted = tmp_path / "full", tmp_path / "parted"
    assert cli.main(args) == 0
    restore = crash_after(monkeypatch, 3)
    parted_args = run_args(parted)
    with pytest.raises(KeyboardInterrupt):
        cli.main(parted_args)
    restore()
    assert cli.main([*parted_args, "train.resume=latest", "data.num_workers=2"]) == 0

    def losses(run):
        rows = read_jsonl(run / "metrics.jsonl")
        return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}

    assert losses(parted) == losses(full) and sorted(losses(full)) == [1, 2, 3, 4]


@pytest.mark.parametrize("name", ["byol", "slip"])
def test_checkpoints_written_before_tasks_index_search_and_export(corpus, tmp_path, name, capsys):
    """Search and export of an earlier-layout checkpoint work through the CLI as they did (the
    heads it kept in model.safetensors are left out); the next command printed searches by
    image where the model has no text tower (BYOL) and by text where it has (SLIP)."""
    from safetensors.torch import load_file

    from vlcontrast.search.engine import SearchIndex

    path = FORMAT2 / name
    index = tmp_path / "index"
    args = ["index", "build", "--checkpoint", str(path), "--data", corpus["heldout_shards"]]
    assert cli.main([*args, "--out", str(index), "--workers", "0"]) == 0
    assert len(SearchIndex(index)) == 64
    query = "--image QUERY.jpg" if name == "byol" else '"a photo of a dog"'
    assert f"search: vlcontrast search {index} {query}" in capsys.readouterr().out
    flat = tmp_path / "weights.safetensors"
    assert cli.main(["export", str(path), "--to", "safetensors", str(flat)]) == 0
    exported = load_file(flat)
    assert exported and not any(k.startswith(("predictor.", "ssl_head.")) for k in exported)


@pytest.mark.parametrize(
    "loss, miner",
    [
        ("triplet", "semi_hard"),
        ("triplet", "batch_hard"),
        ("contrastive", "none"),
        ("npair", "none"),
        ("logistic", "none"),
        ("multi_similarity", "multi_similarity"),
    ],
)
def test_metric_learning_trains_through_the_cli_and_reports_what_it_mined(
    corpus, tmp_path, loss, miner
):
    args = [
        *image_run(corpus, tmp_path, "metric", steps=2),
        f"objective.metric.loss={loss}",
        f"objective.metric.miner={miner}",
    ]
    assert cli.main(args) == 0
    rows = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if "train/loss" in r]
    assert len(rows) == 2 and all(math.isfinite(r["train/loss"]) for r in rows)
    counted = {"triplet": "train/triplets", "npair": "train/pairs"}.get(loss)
    if loss == "multi_similarity":
        counted = "train/pairs"
    if counted:
        assert all(r[counted] > 0 for r in rows), rows
    if loss == "logistic":  # the task's own scale and bias are saved with it
        state = checkpoint.load_state(checkpoint.latest(tmp_path / "checkpoints"))
        assert {"logit_scale", "logit_bias"} <= set(state["parts"]["objective"])


def test_a_miner_that_does_not_fit_the_loss_is_one_message(corpus, tmp_path, capsys):
    args = [*image_run(corpus, tmp_path, "metric"), "objective.metric.miner=multi_similarity"]
    assert cli.main(args) == 2
    assert "objective.metric.miner: 'multi_similarity' mines pairs" in capsys.readouterr().err
