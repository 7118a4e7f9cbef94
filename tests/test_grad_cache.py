"""Gradient caching equals the single big batch for every parameter, logit_scale included,
and replays the RNG so dropout draws the same masks in both passes."""

import pytest
import torch

from tests import distributed_cases as cases
from vlcontrast.train.grad_cache import grad_cached_step, split_batch


def grads_after(model, loss_name, batch, steps):
    out = grad_cached_step(cases.TowersObjective(cases.LOSSES[loss_name], model), batch, steps)
    return out["loss"].detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("loss_name", ["clip_local", "clip_tiled_local", "siglip", "supcon"])
@pytest.mark.parametrize("steps", [2, 3, 5])
def test_equals_one_big_batch(loss_name, steps):
    batch = cases.global_batch()
    want_loss, want = grads_after(cases.towers_for(loss_name), loss_name, batch, 1)
    got_loss, got = grads_after(cases.towers_for(loss_name), loss_name, batch, steps)
    torch.testing.assert_close(got_loss, want_loss, rtol=1e-12, atol=1e-12)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-10, atol=1e-12, msg=name)


def test_logit_scale_gradient_is_not_multiplied_by_the_steps():
    """The known pitfall: one loss per micro-batch over cached features adds the temperature's
    gradient once per micro-batch. Here it must match the big batch at 4 micro-batches."""
    batch = cases.global_batch()
    _, want = grads_after(cases.towers_for("clip_local"), "clip_local", batch, 1)
    _, got = grads_after(cases.towers_for("clip_local"), "clip_local", batch, 4)
    assert want["logit_scale"].abs() > 1e-3
    torch.testing.assert_close(got["logit_scale"], want["logit_scale"], rtol=1e-10, atol=0)


def full_memory_reference(model, batch, steps):
    """Forward the micro-batches in sequence with autograd (the RNG draws the same masks as
    grad caching's first pass), concatenate, one loss, one backward."""
    torch.manual_seed(123)
    objective = cases.TowersObjective(cases.LOSSES["clip_local"], model)
    outs = [objective.outputs(part) for part in split_batch(batch, steps)]
    merged = {
        k: torch.cat([o[k] for o in outs]) if outs[0][k].ndim else outs[0][k] for k in outs[0]
    }
    objective.loss(merged, batch)["loss"].backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_dropout_masks_are_replayed():
    batch = cases.global_batch()
    want = full_memory_reference(cases.towers_for("clip_local", dropout=0.3), batch, 3)
    model = cases.towers_for("clip_local", dropout=0.3)
    torch.manual_seed(123)
    _, got = grads_after(model, "clip_local", batch, 3)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-10, atol=1e-12, msg=name)
    # The comparison sees the masks: another seed gives other gradients.
    model = cases.towers_for("clip_local", dropout=0.3)
    torch.manual_seed(124)
    _, other = grads_after(model, "clip_local", batch, 3)
    assert not torch.allclose(other["img.0.weight"], want["img.0.weight"])


def test_split_batch_shares_metadata_and_splits_rows():
    batch = {"images": torch.zeros(7, 2), "texts": list("abcdefg"), "skipped": {"x": 1}}
    parts = split_batch(batch, 3)
    assert [len(p["images"]) for p in parts] == [2, 3, 2]
    assert sum((p["texts"] for p in parts), []) == list("abcdefg")
    assert all(p["skipped"] is batch["skipped"] for p in parts)


def test_split_batch_splits_view_groups():
    batch = {"views": {"global": torch.zeros(5, 2, 3), "local": torch.ones(5, 6, 1)}, "n": {"x": 1}}
    parts = split_batch(batch, 2)
    assert [len(p["views"]["global"]) for p in parts] == [2, 3]
    assert [len(p["views"]["local"]) for p in parts] == [2, 3]
    assert all(p["n"] is batch["n"] for p in parts)
