"""The CUDA fast paths, each switchable, checked on CPU: scaled-dot-product attention in both
towers, fused AdamW, bf16 autocast and channels-last leave the loss and gradients (or the
update) unchanged within float tolerance; TF32 is set only for CUDA devices; the whole training
step (model + loss) traces into one graph with no break (dynamo's explain), so train.compile
compiles all of it."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import tiny_vit_config
from tests.test_efficiency import batch, loss_and_grads
from vlcontrast.config import OptimConfig
from vlcontrast.models import build_model
from vlcontrast.objectives import build_objective
from vlcontrast.train.model_setup import efficiency_switches, set_tf32
from vlcontrast.train.optim import build_optimizer


def twin_models(cfg):
    torch.manual_seed(0)
    a = build_model(cfg)
    b = build_model(cfg)
    b.load_state_dict(a.state_dict())
    return a, b


def padded(b: dict) -> dict:
    """Rows of different lengths, so the attention masks matter."""
    b = dict(b)
    mask = b["attention_mask"].clone()
    mask[1, 6:] = 0
    mask[3, 3:] = 0
    b["attention_mask"] = mask
    return b


def test_sdpa_off_is_the_explicit_softmax_with_the_same_loss_and_gradients(
    corpus, tmp_path, monkeypatch
):
    cfg = tiny_vit_config(corpus, tmp_path)
    fast, slow = twin_models(cfg)
    efficiency_switches(fast, cfg)  # train.sdpa defaults to on
    cfg.train.sdpa = False
    efficiency_switches(slow, cfg)
    assert all(m.fused_attn for m in fast.modules() if hasattr(m, "fused_attn"))
    assert not any(m.fused_attn for m in slow.modules() if hasattr(m, "fused_attn"))
    assert fast.text.encoder.config._attn_implementation == "sdpa"
    assert slow.text.encoder.config._attn_implementation == "eager"
    import tests.test_efficiency as eff

    monkeypatch.setattr(eff, "batch", lambda seed=0: padded(batch(seed)))
    want_loss, want = loss_and_grads(slow, cfg)
    got_loss, got = loss_and_grads(fast, cfg)
    torch.testing.assert_close(got_loss, want_loss, rtol=1e-5, atol=1e-6)
    assert set(got) == set(want)
    for name, grad in want.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_fused_adamw_makes_the_same_updates(corpus, tmp_path):
    cfg = tiny_vit_config(corpus, tmp_path)
    a, b = twin_models(cfg)
    opt_a = build_optimizer(a, OptimConfig(lr=1e-2, fused="off"))
    opt_b = build_optimizer(b, OptimConfig(lr=1e-2, fused="on"))
    assert opt_b.defaults["fused"] and not opt_a.defaults.get("fused")
    for step in range(3):
        for model, opt in ((a, opt_a), (b, opt_b)):
            torch.manual_seed(step)
            loss = sum((p * torch.randn_like(p)).sum() for p in model.parameters())
            loss.backward()
            opt.step()
            opt.zero_grad()
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6, msg=name)


def test_bf16_autocast_stays_within_bf16_tolerance_of_fp32(corpus, tmp_path):
    cfg = tiny_vit_config(corpus, tmp_path)
    model, _ = twin_models(cfg)
    task = build_objective(cfg.objective)
    task.setup(model, cfg, 6)
    model.eval()  # no dropout: the two passes differ only by precision
    with torch.no_grad():
        want = task.loss(task(batch()), batch())["loss"]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = task(batch())
        assert out["img_emb"].dtype == torch.bfloat16  # autocast really ran the towers
        got = task.loss(out, batch())["loss"]
    torch.testing.assert_close(got.float(), want, rtol=3e-2, atol=3e-2)


def test_tf32_is_switched_for_cuda_devices_only():
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        set_tf32(True, "cpu")
        assert not torch.backends.cuda.matmul.allow_tf32
        set_tf32(True, "cuda")
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        set_tf32(False, "cuda")
        assert not torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@pytest.mark.parametrize("objective", ["clip", "siglip"])
def test_the_training_step_has_no_graph_break(corpus, tmp_path, objective):
    import torch._dynamo as dynamo

    cfg = tiny_vit_config(corpus, tmp_path, f"objective.name={objective}")
    from vlcontrast.train.model_setup import resolve_model_settings

    resolve_model_settings(cfg)
    model = build_model(cfg)
    task = build_objective(cfg.objective)
    task.setup(model, cfg, 6)

    def step(b):
        out = task.loss(task(b), b)
        return out["loss"], out["metrics"]

    dynamo.reset()
    explained = dynamo.explain(step)(batch())
    reasons = [r.reason.splitlines()[0] for r in explained.break_reasons]
    assert explained.graph_break_count == 0, reasons
    assert explained.graph_count == 1


@pytest.mark.slow  # compiles a model (tens of seconds on a CPU)
def test_a_compiled_training_step_trains_like_the_eager_one(corpus, tmp_path):
    """train.compile through the loop's own train_step: model and loss compiled as one function
    give the eager step's losses and weights within float tolerance, step after step."""
    from vlcontrast.train.loop import make_accelerator, train_step
    from vlcontrast.train.model_setup import resolve_model_settings
    from vlcontrast.train.precision import Precision

    results = []
    for compiled in (False, True):
        no_dropout = ["text.config.hidden_dropout_prob=0.0"]  # compiled RNG draws other masks
        no_dropout += ["text.config.attention_probs_dropout_prob=0.0"]
        switch = f"train.compile={str(compiled).lower()}"
        cfg = tiny_vit_config(corpus, tmp_path, switch, *no_dropout)
        resolve_model_settings(cfg)
        torch.manual_seed(0)
        model = efficiency_switches(build_model(cfg), cfg)
        task = build_objective(cfg.objective)
        task.setup(model, cfg, 6)
        optimizer = build_optimizer(task, cfg.optim)
        accelerator, state = make_accelerator(), {"step": 0}
        losses = []
        for step in range(3):
            torch.manual_seed(step)
            loss, _ = train_step(
                accelerator, Precision("no", "cpu"), task, optimizer, batch(step), cfg, state
            )
            state["step"] += 1
            losses.append(loss)
        results.append((losses, {k: v.detach().clone() for k, v in model.state_dict().items()}))
    (eager, eager_weights), (fast, fast_weights) = results
    assert fast == pytest.approx(eager, rel=1e-4)
    assert "_compiled_step" in task.__dict__  # the compiled path ran
    for name, value in eager_weights.items():
        torch.testing.assert_close(fast_weights[name], value, rtol=1e-3, atol=1e-4, msg=name)
