"""SwAV, DINO and DenseCL as training objectives (objectives/swav.py, dino.py, densecl.py) and
their multi-crop views: each loss against its paper's code written out in tests/references.py,
the method's stabilisers (frozen prototypes and last layer, the queue's start, the teacher on
global crops only, the momentum encoder encoding DenseCL's keys), 2- and 4-process gloo steps
against one process (two steps each, so the queue, the centre and the teacher carry over), and
kill + resume through ``cli.main``, bit-exact, state included."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tests import distributed_multicrop_case as case
from tests.conftest import crash_after, run_file, spawn_gloo, tiny_overrides
from tests.references import (
    textbook_densecl,
    textbook_dino,
    textbook_dino_center,
    textbook_sinkhorn,
    textbook_swav,
)
from vlcontrast import cli
from vlcontrast import config as config_lib
from vlcontrast.data.view_presets import MultiCropConfig, multicrop_groups
from vlcontrast.losses.densecl import dense_correspondence, dense_loss, matched_keys
from vlcontrast.losses.dino import center_update, dino_loss, teacher_temperature
from vlcontrast.objectives.base import step_loss
from vlcontrast.objectives.dino import WeightNormLinear
from vlcontrast.schema import ConfigError
from vlcontrast.train import checkpoint
from vlcontrast.train.metrics_log import read_jsonl


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --- multi-crop views ---------------------------------------------------------------------


def test_multicrop_presets_are_the_papers_crops():
    swav = multicrop_groups(MultiCropConfig(), "swav", 224, "objective.swav.crops")
    assert [(g.name, g.size, g.count) for g in swav] == [("global", 224, 2), ("local", 96, 6)]
    assert swav[0].settings()[0].scale == [0.14, 1.0] and swav[1].settings()[5].scale == [
        0.05,
        0.14,
    ]
    assert all(
        v.jitter == [0.8, 0.8, 0.8, 0.2] and v.blur == 0.5 for g in swav for v in g.settings()
    )
    crops = MultiCropConfig([0.4, 1.0], 8, 96, [0.05, 0.4], {"flip": 0.0})
    dino = multicrop_groups(crops, "dino", 224, "objective.dino.crops")
    first, second = dino[0].settings()
    local = dino[1].settings()
    assert (first.blur, first.solarize, second.blur, second.solarize) == (1.0, 0.0, 0.1, 0.2)
    assert len(local) == 8 and all(v.blur == 0.5 and v.solarize == 0 for v in local)
    assert all(v.flip == 0 for g in dino for v in g.settings())  # the change reaches every crop
    assert multicrop_groups(MultiCropConfig(local_count=0), "swav", 32, "x")[0].size == 32


def test_local_crops_keep_the_papers_share_of_any_training_size(capsys):
    """``local_size: 0``: 96 of 224 at any size, on a ViT's patch grid; the run writes the
    size it chose into its config with a note. (It was 96 px whatever the size: a 32-px
    model's local crops were three times its global ones, and DINO at model.preset=tiny took
    20 s a step on 2 cores: benchmarks/local_crops.py.)"""
    from vlcontrast.data.view_presets import fitted_local_size, vit_patch
    from vlcontrast.train.model_setup import resolve_model_settings

    assert [fitted_local_size(224, p) for p in (1, 8, 14, 16, 32)] == [96, 96, 98, 96, 96]
    assert fitted_local_size(32, 4) == 12 and fitted_local_size(8, 16) == 16
    assert vit_patch("vit_small_patch14_dinov2", {}) == 14
    assert vit_patch("vit_base_patch32_clip_224", {"patch_size": 4}) == 4
    assert vit_patch("resnet50", {}) == 1
    for name in ("swav", "dino"):
        cfg = config_lib.load(
            None, ["model.preset=tiny", "model.kind=image", f"objective.name={name}"]
        )
        resolve_model_settings(cfg)
        assert getattr(cfg.objective, name).crops.local_size == 12
        note = f"objective.{name}.crops.local_size=0 -> 12 (96/224 of image.image_size=32, a"
        assert note in capsys.readouterr().out
    cfg = config_lib.load(None, ["objective.name=dino", "model.kind=image", "image.model=resnet18"])
    resolve_model_settings(cfg)
    assert cfg.objective.dino.crops.local_size == 96  # image.image_size 224: the papers' crops


def test_a_model_preset_leaves_an_image_only_methods_heads_alone():
    """A preset's model.embed_dim is its shared space's size; in run files from before methods
    owned their heads the key shaped an image-only projection, and the preset's value was taken
    for that: SimCLR's MLP head became one linear layer, DINO's 3-layer head one layer."""
    for name in ("simclr", "dino", "byol"):
        plain = config_lib.load(None, ["model.kind=image", f"objective.name={name}"])
        tiny = config_lib.load(
            None, ["model.preset=tiny", "model.kind=image", f"objective.name={name}"]
        )
        assert getattr(tiny.objective, name).projector == getattr(plain.objective, name).projector
    old = config_lib.load(None, ["model.kind=image", "objective.name=simclr", "model.embed_dim=64"])
    assert (old.objective.simclr.projector.layers, old.objective.simclr.projector.dim) == (1, 64)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("objective.swav.crops.augment={blurr: 0}", "objective.swav.crops.augment"),
        ("objective.dino.crops.local_scale=[0.5, 0.1]", "objective.dino.crops"),
    ],
)
def test_bad_crop_settings_name_the_key(override, key):
    name = override.split(".")[1]
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config_lib.load(None, [f"objective.name={name}", "model.kind=image", override])


def test_a_vit_takes_the_local_crops_at_their_own_size(corpus, tmp_path):
    """The run turns on image.dynamic_size for multi-crop; the ViT then embeds 32- and 16-px
    crops, and at the training size gives what the fixed-size ViT gives."""
    from vlcontrast.models import build_model
    from vlcontrast.train.model_setup import resolve_model_settings

    cfg = config_lib.load(None, multicrop_run(corpus, tmp_path, "dino")[2:])
    resolve_model_settings(cfg)
    assert cfg.image.dynamic_size
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    big, small = rand(2, 3, 32, 32).float(), rand(2, 3, 16, 16, seed=1).float()
    assert model(images=small)["img_feat"].shape == model(images=big)["img_feat"].shape
    cfg.image.dynamic_size = False
    torch.manual_seed(0)
    fixed = build_model(cfg).eval()
    torch.testing.assert_close(model(images=big)["img_feat"], fixed(images=big)["img_feat"])


# --- SwAV ---------------------------------------------------------------------------------


def swav_by_hand(task, batch, queue=None):
    """SwAV's loss written out: unit-norm projections, scores against the prototypes, codes of
    the two global crops from the textbook Sinkhorn (over the queue's scores too)."""
    crops = torch.cat([batch["views"]["global"], batch["views"]["local"]], dim=1)
    w = task.prototypes.weight
    scores = [
        F.normalize(task.projector(task.model(images=crops[:, v])["img_feat"]), dim=-1) @ w.T
        for v in range(crops.shape[1])
    ]
    codes = {}
    for i in range(2):
        s = scores[i].detach()
        if queue is not None:
            s = torch.cat([queue[i] @ w.detach().T, s])
        codes[i] = textbook_sinkhorn(s, task.cfg.epsilon, task.cfg.sinkhorn_iterations)[
            -len(scores[i]) :
        ]
    return textbook_swav(scores, codes, task.cfg.temperature)


def test_swav_loss_with_and_without_the_queue_matches_the_paper():
    task = case.make_objective("swav")  # queue of 12 rows, filled from the first step
    batch = case.global_batch("swav", 1)
    assert torch.allclose(task.prototypes.weight.norm(dim=1), torch.ones(4, dtype=torch.float64))
    out = step_loss(task, batch)
    torch.testing.assert_close(out["loss"], swav_by_hand(task, batch), rtol=1e-10, atol=1e-12)
    out["loss"].backward()
    assert not task.prototypes.weight.grad.any()  # frozen for the first step
    with torch.no_grad():
        task.prototypes.weight.mul_(3.0)
    task.after_step(1)  # renormalised; the batch's global crops queued
    assert torch.allclose(task.prototypes.weight.norm(dim=1), torch.ones(4, dtype=torch.float64))
    assert int(task.queue_filled) == 12
    queue = task.queue.clone()
    batch2 = case.global_batch("swav", 2)
    task.zero_grad()
    out = step_loss(task, batch2)
    want = swav_by_hand(task, batch2, queue)
    torch.testing.assert_close(out["loss"], want, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(want, swav_by_hand(task, batch2))  # the queue changes the codes
    out["loss"].backward()
    assert task.prototypes.weight.grad.abs().sum() > 0  # trained from the second step


def test_swav_freezes_its_prototypes_for_an_epoch_at_most_a_tenth_of_the_run(capsys):
    """``freeze_prototypes_steps: -1`` (the default): SwAV's scripts froze them for one
    ImageNet epoch (313 steps at batch 4096, 5005 at 256); a fixed 313 froze them for much of a
    short run (nearly half of the digits benchmark's 60 epochs, 11 steps each)."""
    from vlcontrast.objective_settings import SwAVConfig
    from vlcontrast.objectives.swav import SwAVObjective

    def frozen(epoch_steps, run_steps, given=-1):
        task = SwAVObjective(SwAVConfig(freeze_prototypes_steps=given))
        task.epoch_steps = epoch_steps
        return task.freeze_steps(run_steps)

    assert frozen(313, 250_000) == 313 and frozen(5005, 500_000) == 5005  # SwAV's own runs
    assert frozen(12, 337) == 12  # an epoch of a short run
    assert frozen(50, 100) == 10  # ... at most a tenth of it
    assert "freeze_prototypes_steps=-1 -> 10 steps (one epoch, 10% of this run's 100 steps)" in (
        capsys.readouterr().out
    )
    assert frozen(0, 10**6) == 313  # no dataset size: SwAV's ImageNet epoch at batch 4096
    assert frozen(50, 100, given=70) == 70 and frozen(50, 100, given=0) == 0


def test_dino_freezes_its_last_layer_for_an_epoch_at_most_a_tenth_of_the_run(capsys):
    """``freeze_last_layer_epochs: -1`` (the default): DINO's one epoch, at most a tenth of
    the run (a fixed epoch froze a third of a 3-epoch run), none when the epoch's length is
    unknown (a fixed epoch stopped such a run with an error); a given value is epochs."""
    from types import SimpleNamespace

    from vlcontrast.objective_settings import DINOConfig
    from vlcontrast.objectives.dino import DINOObjective

    def frozen(epoch_steps, run_steps, given=-1.0):
        task = DINOObjective(DINOConfig(out_dim=8, freeze_last_layer_epochs=given))
        task.epoch_steps = epoch_steps
        cfg = SimpleNamespace(train=SimpleNamespace(steps=run_steps, seed=0, fsdp=False))
        task.setup(case.TinyMapModel(), cfg, 4)
        return task.freeze_steps

    assert frozen(1251, 1_000_000) == 1251  # DINO's ImageNet epoch at batch 1024
    assert frozen(30, 90) == 9  # 3 epochs: a tenth, not a third
    assert "freeze_last_layer_epochs=-1 -> 9 steps (one epoch, 10% of this run's 90" in (
        capsys.readouterr().out
    )
    assert frozen(0, 1000) == 0  # resampled data of unknown size
    assert "(the epoch's length is unknown)" in capsys.readouterr().out
    assert frozen(30, 90, given=2.0) == 60


def test_dinos_head_is_the_papers_on_its_backbones_and_smaller_below_them(capsys):
    """``out_dim: 0`` (the default): DINO's 65,536 outputs on ViT-S/16 and ResNet-50 (its
    runs), 4,096 on a smaller backbone, where 256 x 65,536 last-layer weights dwarfed the
    tower; the fitted value goes into the config (the saved run rebuilds the same head), and
    a value given is kept."""
    from types import SimpleNamespace

    import timm

    from vlcontrast.objective_settings import DINOConfig
    from vlcontrast.objectives.dino import DINOObjective, fitted_out_dim

    def params(name):
        return sum(p.numel() for p in timm.create_model(name, num_classes=0).parameters())

    for name, want in (("vit_small_patch16_224", 65536), ("resnet50", 65536)):
        assert fitted_out_dim(params(name)) == want, name
    assert fitted_out_dim(params("resnet18")) == 4096

    def built(**given):
        c = DINOConfig(**given)
        task = DINOObjective(c)
        cfg = SimpleNamespace(train=SimpleNamespace(steps=100, seed=0, fsdp=False))
        task.setup(case.TinyMapModel(), cfg, 4)
        return c, task

    c, task = built()
    assert c.out_dim == 4096 and task.last_layer.weight_v.shape[0] == 4096
    assert task.center.shape == (4096,)
    assert "note: objective.dino.out_dim=0 -> 4096 (an image tower of" in capsys.readouterr().out
    c, task = built(out_dim=65536)
    assert c.out_dim == 65536 and task.last_layer.weight_v.shape[0] == 65536
    assert "out_dim=0" not in capsys.readouterr().out


def test_swav_fills_its_queue_from_the_start_epoch_only():
    task = case.make_objective("swav")
    task.queue_start = 2  # steps: e.g. queue_start_epochs=2 at 1 step per epoch
    for step in (1, 2, 3):
        loss = step_loss(task, case.global_batch("swav", step))["loss"]
        loss.backward()
        task.after_step(step)
        assert int(task.queue_filled) == (12 if step == 3 else 0)


# --- DINO ---------------------------------------------------------------------------------


def test_dino_loss_and_centre_match_dinos_code():
    student, teacher, center = rand(5, 6, 10), rand(5, 2, 10, seed=1), rand(10, seed=2) * 0.1
    crop_major = student.transpose(0, 1).reshape(-1, 10)  # DINO's (C·B, K)
    teacher_major = teacher.transpose(0, 1).reshape(-1, 10)
    want = textbook_dino(crop_major, teacher_major, center, 0.1, 0.04, 6)
    torch.testing.assert_close(
        dino_loss(student, teacher, center, 0.1, 0.04), want, rtol=1e-12, atol=1e-14
    )
    torch.testing.assert_close(
        center_update(center, teacher, 0.9), textbook_dino_center(center, teacher_major, 0.9)
    )
    # a teacher equal to the student on the other global crop, at equal temperatures and no
    # centre: the loss of crop pairs (0, 1) and (1, 0) is the entropy of the softmax
    same = rand(4, 2, 10, seed=3)
    p = F.softmax(same, dim=-1)
    entropy = -(p * p.log()).sum(-1).mean()
    swapped = same.flip(1)
    torch.testing.assert_close(dino_loss(swapped, same, torch.zeros(10), 1.0, 1.0), entropy)
    assert teacher_temperature(0, 30, 0.04, 0.07) == 0.04
    assert teacher_temperature(15, 30, 0.04, 0.07) == pytest.approx(0.055)
    assert (
        teacher_temperature(30, 30, 0.04, 0.07) == teacher_temperature(99, 30, 0.04, 0.07) == 0.07
    )


def test_dinos_last_layer_is_torch_weight_norm_with_unit_gain():
    layer = WeightNormLinear(5, 7, trainable_gain=True).double()
    reference = torch.nn.Linear(5, 7, bias=False).double()
    reference.weight.data.copy_(layer.weight_v.data)
    reference = torch.nn.utils.parametrizations.weight_norm(reference)
    reference.parametrizations.weight.original0.data.fill_(1.0)  # DINO: weight_g.fill_(1)
    x = rand(3, 5)
    torch.testing.assert_close(layer(x), reference(F.normalize(x, dim=-1)))


def test_dino_teacher_sees_global_crops_and_the_last_layer_waits_an_epoch():
    task = case.make_objective("dino")  # 1 step per epoch, last layer frozen for 1 epoch
    batch = case.global_batch("dino", 1)
    out = task(batch)
    assert out["student"].shape == (12, 5, 6) and out["teacher"].shape == (12, 2, 6)
    changed = {"views": {**batch["views"], "local": batch["views"]["local"] + 1}}
    assert torch.equal(task(changed)["teacher"], out["teacher"])
    loss = task.loss(out, batch)["loss"]
    loss.backward()
    assert not task.last_layer.weight_v.grad.any() and task.projector[0].weight.grad.any()
    center = task.center.clone()
    task.after_step(1)
    assert not torch.equal(task.center, center)
    task.zero_grad()
    step_loss(task, case.global_batch("dino", 2))["loss"].backward()
    assert task.last_layer.weight_v.grad.abs().sum() > 0
    assert task.teacher_temp() == pytest.approx(0.055)  # half-way through a 2-step warm-up


# --- DenseCL ------------------------------------------------------------------------------


def test_densecl_correspondence_and_losses_match_densecls_code():
    n, s, c, f = 3, 4, 5, 6
    q, k = F.normalize(rand(n, c), dim=1), F.normalize(rand(n, c, seed=1), dim=1)
    q_grid = F.normalize(rand(n, s, c, seed=2), dim=-1)
    k_grid = F.normalize(rand(n, s, c, seed=3), dim=-1)
    q_b, k_b = rand(n, s, f, seed=4), rand(n, s, f, seed=5)
    queue, queue2 = F.normalize(rand(7, c, seed=6), dim=1), F.normalize(rand(7, c, seed=7), dim=1)
    single, dense, total = textbook_densecl(
        q,
        k,
        queue.T,
        q_grid.transpose(1, 2),
        k_grid.transpose(1, 2),
        F.normalize(q_b, dim=-1).transpose(1, 2),
        F.normalize(k_b, dim=-1).transpose(1, 2),
        queue2.T,
        0.2,
        0.5,
    )
    index = dense_correspondence(q_b, k_b)
    loop = [
        [
            max(range(s), key=lambda j: float(F.cosine_similarity(q_b[b, i], k_b[b, j], dim=0)))
            for i in range(s)
        ]
        for b in range(n)
    ]
    assert index.tolist() == loop
    got = dense_loss(q_grid, matched_keys(k_grid, index), queue2, 0.2)
    torch.testing.assert_close(got, dense, rtol=1e-12, atol=1e-14)


def test_densecl_encodes_the_keys_with_the_momentum_encoder():
    """Keys, matched dense keys and pooled dense keys all come from ``target``: change the
    target and they change, the queries do not; the objective's loss is DenseCL's."""
    task = case.make_objective("densecl")
    batch = case.global_batch("densecl", 1)
    out = task(batch)
    x_k = batch["images"][:, 1]
    target = task.encode(task.target, x_k)
    torch.testing.assert_close(out["k"], target["emb"])
    torch.testing.assert_close(out["k_pooled"], target["pooled"])
    with torch.no_grad():
        for p in task.target.parameters():
            p.add_(0.3 * torch.randn_like(p))
    moved = task(batch)
    assert torch.equal(moved["q"], out["q"]) and torch.equal(moved["q_grid"], out["q_grid"])
    for name in ("k", "k_matched", "k_pooled"):
        assert not torch.allclose(moved[name], out[name]), name
    # the loss: DenseCL's code on the same tensors
    query = task.encode(task.online(), batch["images"][:, 0])
    key = task.encode(task.target, x_k)
    single, dense, total = textbook_densecl(
        query["emb"],
        key["emb"],
        task.queue.T,
        query["grid"].transpose(1, 2),
        key["grid"].transpose(1, 2),
        F.normalize(query["feat"], dim=-1).transpose(1, 2),
        F.normalize(key["feat"], dim=-1).transpose(1, 2),
        task.dense_queue.T,
        0.2,
        0.5,
    )
    torch.testing.assert_close(step_loss(task, batch)["loss"], total, rtol=1e-10, atol=1e-12)
    task.after_step(1)
    assert int(task.dense_queue_ptr) == 12
    torch.testing.assert_close(task.dense_queue[:12], key["pooled"].detach())


def test_densecl_trains_the_global_term_alone_until_the_dense_start_step():
    """``dense_start_steps`` (DenseCL's lambda warm-up hook): lambda is 0 for that many
    optimizer steps, then ``loss_lambda``; the dense head takes no gradient before it."""
    task = case.make_objective("densecl")
    task.cfg.dense_start_steps = 2
    for step in range(3):
        batch = case.global_batch("densecl", step)
        task.zero_grad()
        out = step_loss(task, batch)
        single, dense = out["metrics"]["loss_single"], out["metrics"]["loss_dense"]
        expected = single if step < 2 else 0.5 * single + 0.5 * dense
        torch.testing.assert_close(out["loss"].detach().to(expected.dtype), expected)
        out["loss"].backward()
        grads = [p.grad for p in task.dense_head.parameters()]
        silent = all(g is None or not g.any() for g in grads)
        assert silent == (step < 2), step
        task.after_step(step + 1)


# --- across ranks ---------------------------------------------------------------------------


@pytest.fixture(scope="module", params=[2, 4])
def multicrop_results(request, tmp_path_factory):
    world = request.param
    tmp = tmp_path_factory.mktemp(f"multicrop{world}")
    spawn_gloo(case.worker, world, tmp, str(tmp / "results.pt"))
    return torch.load(tmp / "results.pt")


@pytest.mark.parametrize("name", case.METHODS)
def test_two_distributed_steps_equal_one_process(multicrop_results, name):
    """Loss and gradients of both steps, and the state after them (DINO's centre and teacher,
    DenseCL's queues and momentum encoder; SwAV's queue, each rank scoring its share of it in
    a Sinkhorn over all ranks). ``densecl_bn``: batch norm per device, the keys shuffled across
    ranks, equals one process whose batch norm is split into the devices' groups."""
    task = case.make_objective(name)
    if name.endswith("_bn"):
        from vlcontrast.models.split_bn import split_batch_norm

        world = multicrop_results["world"]
        task = split_batch_norm(task, world)
        task.bn_groups = world
    want = case.two_steps(name, task, task, 0, case.GLOBAL_BATCH, 1)
    got = multicrop_results[name]
    for step in (1, 2):
        torch.testing.assert_close(got[step]["loss"], want[step]["loss"], rtol=1e-10, atol=1e-12)
        assert set(got[step]["grads"]) == set(want[step]["grads"])
        for param, grad in want[step]["grads"].items():
            torch.testing.assert_close(got[step]["grads"][param], grad, rtol=1e-9, atol=1e-12)
    assert set(got["state"]) == set(want["state"]) and want["state"]
    for key, value in want["state"].items():
        torch.testing.assert_close(got["state"][key], value, rtol=1e-9, atol=1e-12, msg=key)


# --- kill and resume ------------------------------------------------------------------------

SMALL_CROPS = "{local_count: 2, local_size: 16, augment: {flip: 0, blur: 0}}"


def multicrop_run(corpus, out_dir, name, steps=4):
    overrides = [o for o in tiny_overrides(corpus, out_dir, steps) if not o.startswith("text.")]
    overrides = [o for o in overrides if not o.startswith("model.embed_dim")]
    overrides += ["model.kind=image", f"objective.name={name}", "data.num_samples=256"]
    small_head = "{layers: 2, hidden: 16, dim: 16}"
    overrides += {
        "swav": [
            f"objective.swav.crops={SMALL_CROPS}",
            f"objective.swav.projector={small_head}",
            "objective.swav.prototypes=10",
            "objective.swav.queue_size=16",  # filled at step 3, used at step 4, after the resume
            "objective.swav.queue_start_epochs=0.1",  # 2 steps done (16 steps an epoch)
            "objective.swav.freeze_prototypes_steps=2",
        ],
        "dino": [
            f"objective.dino.crops={SMALL_CROPS}",
            "objective.dino.projector={layers: 3, hidden: 16, dim: 8, bn: false, act: gelu}",
            "objective.dino.out_dim=32",
            "objective.dino.freeze_last_layer_epochs=0.125",  # 2 steps
            "objective.dino.warmup_teacher_temp_epochs=0.25",
            "objective.dino.teacher_temp=0.07",
        ],
        "densecl": [
            "views.preset=small",
            f"objective.densecl.projector={small_head}",
            "objective.densecl.dense_head={layers: 2, hidden: 16, dim: 8}",
            "objective.densecl.queue_size=32",
        ],
    }[name]
    return ["train", run_file(out_dir), *overrides]


@pytest.mark.parametrize("name", ["swav", "dino", "densecl"])
def test_kill_and_resume_is_bit_exact_state_included(corpus, tmp_path, monkeypatch, name):
    full, parted = tmp_path / "full", tmp_path / "parted"
    assert cli.main(multicrop_run(corpus, full, name)) == 0
    restore = crash_after(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        cli.main(multicrop_run(corpus, parted, name))
    restore()
    assert cli.main([*multicrop_run(corpus, parted, name), "train.resume=latest"]) == 0

    def losses(run):
        rows = read_jsonl(run / "metrics.jsonl")
        return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}

    assert losses(parted) == losses(full) and sorted(losses(full)) == [1, 2, 3, 4]
    assert all(math.isfinite(v) for v in losses(full).values())
    a, b = (checkpoint.latest(run / "checkpoints") for run in (full, parted))
    state_a = checkpoint.load_state(a)["parts"]["objective"]
    state_b = checkpoint.load_state(b)["parts"]["objective"]
    expected = {"swav": {"queue", "queue_filled", "prototypes.weight"}, "dino": {"center"}}
    expected["densecl"] = {"queue", "dense_queue"}
    assert expected[name] <= set(state_a)
    if name != "swav":
        assert any(k.startswith("target.") for k in state_a)
    assert set(state_a) == set(state_b)
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key
    if name == "swav":
        assert state_a["queue_filled"] == 2 * 16 and state_a["queue"].abs().sum() > 0


def test_a_resumed_dino_run_keeps_the_head_its_checkpoint_was_made_with(
    corpus, tmp_path, monkeypatch, capsys
):
    """A run whose last layer had 32 outputs, resumed with ``out_dim`` at its fitted default
    (0: 4,096 on this backbone), as a run made before that default would be: it resumes with
    the checkpoint's 32, says so, and saves it in its config."""
    import json

    run = tmp_path / "run"
    restore = crash_after(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        cli.main(multicrop_run(corpus, run, "dino"))
    restore()
    resumed = [
        *multicrop_run(corpus, run, "dino"),
        "train.resume=latest",
        "objective.dino.out_dim=0",
    ]
    assert cli.main(resumed) == 0
    assert "note: objective.dino.out_dim=0 -> 32 (the value the resumed" in capsys.readouterr().out
    assert json.loads((run / "config.json").read_text())["objective"]["dino"]["out_dim"] == 32


@pytest.mark.parametrize("name", ["swav", "dino", "densecl"])
def test_the_smoke_run_files_train_and_the_real_ones_load(corpus, tmp_path, name):
    """configs/ssl/NAME_smoke.yaml trains (2 steps on the test corpus; its own evaluators
    left out), and NAME_imagenet.yaml is a valid config naming the published target."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs" / "ssl"
    args = [
        "train",
        str(root / f"{name}_smoke.yaml"),
        f"data.train_shards={corpus['train_shards']}",
        "data.num_workers=0",
        "train.steps=2",
        "train.tensorboard=false",
        "train.progress=false",
        f"train.output_dir={tmp_path}",
        "eval.evaluators=[]",
    ]
    if name == "dino":
        args.append("image.model_kwargs={patch_size: 16, embed_dim: 32, depth: 1, num_heads: 2}")
    assert cli.main(args) == 0
    real = root / f"{name}_imagenet.yaml"
    config_lib.load(str(real), [])
    target = {"swav": "75.3", "dino": "74.5", "densecl": "58.7"}[name]
    assert "Target: " in real.read_text() and target in real.read_text()


@pytest.mark.parametrize("name", ["swav", "dino", "densecl"])
def test_gradient_caching_gives_the_plain_steps_loss_and_gradients(name):
    """Three micro-batches (each re-forwarded) give the one-pass step: SwAV's codes come from
    the whole batch, DINO's centre update from the whole batch's teacher outputs."""
    from vlcontrast.train.grad_cache import grad_cached_step

    results = []
    for steps in (1, 3):
        task = case.make_objective(name)
        out = grad_cached_step(task, case.global_batch(name, 1), steps)
        grads = {n: p.grad.clone() for n, p in task.named_parameters() if p.grad is not None}
        task.after_step(1)
        results.append((out["loss"].detach(), grads, case.shared_state(task)))
    (loss_a, grads_a, state_a), (loss_b, grads_b, state_b) = results
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-10, atol=1e-12)
    assert set(grads_a) == set(grads_b)
    for key in grads_a:
        torch.testing.assert_close(grads_b[key], grads_a[key], rtol=1e-9, atol=1e-12)
    for key in state_a:
        torch.testing.assert_close(state_b[key], state_a[key], rtol=1e-9, atol=1e-12)
