"""The training step against OpenCLIP's own: from one OpenCLIP initialisation, imported into
vlcontrast, and identical batches, vlcontrast's ``train_step`` (objective, optimizer groups,
schedule, clipping, logit-scale clamp) and OpenCLIP's ``train_one_epoch`` (open_clip_train) give
the same loss at each of 20 steps and the same weights after them."""

from __future__ import annotations

import types

import pytest
import torch

from tests.conftest import import_openclip_model

open_clip = pytest.importorskip("open_clip")
open_clip_train = pytest.importorskip("open_clip_train.train")

MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
MODEL_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 99, "width": 32, "heads": 4, "layers": 2},
}
STEPS, WARMUP, BATCH, LR = 20, 5, 8, 1e-3


def batches(count: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(uint8 images, ids padded to the context, mask): eight classes whose images carry a
    class-coloured square and whose captions name the class, so the loss has something to learn."""
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(count):
        labels = torch.randperm(8, generator=gen)[:BATCH] % 8
        images = torch.randint(0, 64, (BATCH, 3, 32, 32), dtype=torch.uint8, generator=gen)
        ids = torch.zeros(BATCH, 16, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, label in enumerate(labels.tolist()):
            images[row, label % 3, 8 * (label // 3) : 8 * (label // 3) + 8] = 255
            words = torch.randint(10, 90, (5,), generator=gen)
            words[int(torch.randint(0, 5, (1,), generator=gen))] = 1 + label
            length = int(torch.randint(3, 6, (1,), generator=gen))
            ids[row, :length] = words[:length]
            ids[row, length - 1] = 1 + label
            ids[row, length] = 98  # end of text: the highest id, OpenCLIP's argmax pooling
            mask[row, : length + 1] = 1
        out.append((images, ids, mask))
    return out


class Batches(list):
    """What ``train_one_epoch`` reads of a loader: the batches and their counts."""

    @property
    def num_batches(self) -> int:
        return len(self)

    @property
    def num_samples(self) -> int:
        return len(self) * BATCH


def openclip_losses(model, data, grad_clip: float | None) -> list[float]:
    """OpenCLIP's own epoch, its optimizer groups and schedule as ``open_clip_train.main``
    builds them."""
    from open_clip_train.params import parse_args
    from open_clip_train.scheduler import cosine_lr

    args = parse_args(["--model", "ViT-B-32", "--lr", str(LR), "--warmup", str(WARMUP)])
    args.wandb = False
    args.device, args.precision, args.distill, args.world_size = "cpu", "fp32", False, 1
    args.rank = args.local_rank = 0
    args.batch_size, args.log_every_n_steps, args.grad_clip_norm = BATCH, 1000, grad_clip
    exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n  # noqa: E731
    named = list(model.named_parameters())
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0},
            {"params": [p for n, p in named if not exclude(n, p)], "weight_decay": args.wd},
        ],
        lr=args.lr,
        betas=(args.beta1, args.beta2),
        eps=args.eps,
    )
    scheduler = cosine_lr(optimizer, args.lr, args.warmup, STEPS)
    recorded = []
    clip_loss = open_clip.ClipLoss()

    def loss(**out):
        values = clip_loss(**out)
        recorded.append(float(values["contrastive_loss"].detach()))
        return values

    pixels = [((images.float() / 255 - MEAN) / STD, ids) for images, ids, _ in data]
    train = types.SimpleNamespace(dataloader=Batches(pixels), set_epoch=lambda epoch: None)
    open_clip_train.train_one_epoch(
        model, {"train": train}, loss, 0, optimizer, None, scheduler, None, args
    )
    return recorded


def vlcontrast_losses(model, cfg, data) -> list[float]:
    from vlcontrast.objectives import build_objective
    from vlcontrast.train.loop import make_accelerator, train_step
    from vlcontrast.train.optim import build_optimizer, build_scheduler
    from vlcontrast.train.precision import Precision

    accelerator = make_accelerator()
    precision = Precision("no", accelerator.device)
    task = build_objective(cfg.objective)
    task.setup(model, cfg, BATCH)
    optimizer = build_optimizer(task, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, STEPS)
    state, losses = {"step": 0}, []
    for images, ids, mask in data:
        batch = {"images": images, "input_ids": ids, "attention_mask": mask}
        loss, _ = train_step(accelerator, precision, task, optimizer, batch, cfg, state)
        scheduler.step()
        state["step"] += 1
        losses.append(loss)
    return losses


@pytest.mark.parametrize("grad_clip", [None, 1.0])
def test_twenty_steps_track_openclip_from_the_same_initialisation(tmp_path, grad_clip):

    from vlcontrast.models.hf_clip import hf_to_ours, text_prefix
    from vlcontrast.models.openclip import openclip_to_hf

    torch.manual_seed(0)
    reference = open_clip.CLIP(**MODEL_CFG, output_dict=True)
    ours, _, cfg = import_openclip_model(reference, MODEL_CFG, tmp_path)
    cfg.optim.lr, cfg.optim.warmup_steps = LR, WARMUP
    cfg.optim.grad_clip = grad_clip or 0.0
    cfg.train.precision = "no"
    data = batches(STEPS)

    want = openclip_losses(reference, data, grad_clip)
    got = vlcontrast_losses(ours, cfg, data)

    assert len(want) == len(got) == STEPS
    assert want[-1] < want[0] - 0.3  # it learned: the comparison is not between two flat lines
    torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=0, atol=5e-6)
    final = openclip_to_hf(reference.state_dict(), MODEL_CFG)
    final = hf_to_ours(final, MODEL_CFG["vision_cfg"]["layers"], text_prefix(ours.state_dict()))
    mine = ours.state_dict()
    assert set(final) == set(mine)
    for name, value in final.items():  # every weight, after 20 AdamW steps
        got_w, want_w = mine[name], value.reshape(mine[name].shape)
        # The key bias's exact gradient is zero (softmax ignores a shift common to a row), so
        # Adam moves it by the two implementations' rounding noise: only q and v are compared.
        if name.endswith("k_proj.bias"):
            continue
        if name.endswith("qkv.bias"):
            q, _, v = got_w.chunk(3)
            got_w, want_w = torch.cat([q, v]), torch.cat([want_w.chunk(3)[0], want_w.chunk(3)[2]])
        torch.testing.assert_close(got_w, want_w, rtol=0, atol=5e-6, msg=name)


def test_a_fresh_clip_layout_model_starts_with_openclips_initialisation(tmp_path):
    """Every weight of a from-scratch model has the spread of OpenCLIP's for the same shape
    (models/clip_init.py: the libraries' own initialisations did not learn on the digits)."""
    from vlcontrast import config as config_lib
    from vlcontrast.models.build import build_model
    from vlcontrast.models.hf_clip import hf_to_ours, text_prefix
    from vlcontrast.models.openclip import openclip_to_hf

    cfg = {**MODEL_CFG, "vision_cfg": {**MODEL_CFG["vision_cfg"], "width": 256, "layers": 4}}
    cfg["text_cfg"] = {**cfg["text_cfg"], "width": 256, "heads": 8, "layers": 4}
    torch.manual_seed(0)
    reference = open_clip.CLIP(**cfg)
    _, _, ours_cfg = import_openclip_model(reference, cfg, tmp_path)
    fresh = build_model(config_lib.resolve(ours_cfg)).state_dict()
    theirs = hf_to_ours(openclip_to_hf(reference.state_dict(), cfg), 4, text_prefix(fresh))
    for name, value in theirs.items():
        if value.numel() < 2:  # logit_scale
            continue
        if value.float().std() == 0:  # norms' gains and biases, zeroed attention biases
            assert torch.equal(fresh[name], value), name
            continue
        ratio = float(fresh[name].float().std() / value.float().std())
        assert 0.85 < ratio < 1.15, f"{name}: std {ratio:.2f}x OpenCLIP's"
