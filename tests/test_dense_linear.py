"""The linear segmentation probe (eval/dense_linear.py): its pixel labels are a per-pixel
classifier on bilinearly interpolated features, its fit is the optimum of the penalised
logistic regression of the labelled patches (the gradient written here vanishes there), the
evaluator picks its penalty on held-out images and scores the pixels, and ``vlcontrast eval
dense-linear`` runs from the command line."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from vlcontrast import cli
from vlcontrast.config import ConfigError, EvaluatorConfig
from vlcontrast.data.image import CropResize
from vlcontrast.data.synthetic import MASK_CLASSES
from vlcontrast.eval import dense_knn as dk
from vlcontrast.eval import dense_linear as dl


def test_pixel_labels_classify_bilinearly_interpolated_features():
    """Upsampling the logits equals classifying the upsampled features (a linear map commutes
    with interpolation): the 1 x 1 conv head of the linear protocol, pixel by pixel."""
    gen = torch.Generator().manual_seed(0)
    feat = torch.randn(2, 3, 3, 5, generator=gen)
    weight, bias = torch.randn(5, 4, generator=gen), torch.randn(4, generator=gen)
    got = dl.pixel_labels(feat, weight, bias, 12)
    up = F.interpolate(feat.permute(0, 3, 1, 2), size=(12, 12), mode="bilinear")
    want = (up.permute(0, 2, 3, 1) @ weight + bias).argmax(dim=-1)
    assert got.shape == (2, 12, 12) and torch.equal(got, want)
    # one patch per image: every pixel takes that patch's class
    flat = dl.pixel_labels(feat[:, :1, :1], weight, bias, 4)
    assert torch.equal(
        flat, (feat[:, 0, 0] @ weight + bias).argmax(-1)[:, None, None].expand(-1, 4, 4)
    )


def test_the_fit_is_the_optimum_of_the_labelled_patches_logistic_regression():
    """At the returned weights the gradient of mean cross-entropy + wd/2 |W|^2 over the
    patches labelled here by hand (majority of their pixels, mostly-ignored ones left out) is
    zero: X^T (softmax - Y) / n + wd W = 0 and sum(softmax - Y) / n = 0."""
    gen = torch.Generator().manual_seed(1)
    feat = torch.randn(3, 2, 2, 4, generator=gen)
    masks = torch.randint(0, 3, (3, 8, 8), generator=gen)
    masks[0, :4, :4] = dk.IGNORE  # a patch with no label
    masks[1, 4:, 4:] = 2  # a patch of one class
    weight, bias = dl.fit_patches(feat, masks, 3, weight_decay=0.05)
    rows, labels = [], []
    for n in range(3):
        for i in range(2):
            for j in range(2):
                block = masks[n, 4 * i : 4 * i + 4, 4 * j : 4 * j + 4].flatten().tolist()
                counts = [block.count(c) for c in range(3)] + [block.count(dk.IGNORE)]
                best = max(range(4), key=lambda c: (counts[c], -c))
                if best < 3:
                    rows.append(feat[n, i, j].double())
                    labels.append(best)
    x, y = torch.stack(rows), F.one_hot(torch.tensor(labels), 3).double()
    assert len(x) == 11
    residual = torch.softmax(x @ weight.double() + bias.double(), dim=1) - y
    grad_w = x.T @ residual / len(x) + 0.05 * weight.double()
    grad_b = residual.mean(dim=0)
    assert grad_w.abs().max() < 1e-4 and grad_b.abs().max() < 1e-4  # float32 L-BFGS
    with pytest.raises(ValueError, match="every training patch is mostly ignored"):
        dl.fit_patches(feat, torch.full_like(masks, dk.IGNORE), 3, weight_decay=0.05)


def test_standardise_by_the_training_features_statistics():
    gen = torch.Generator().manual_seed(2)
    train = torch.randn(4, 3, 3, 5, generator=gen) * torch.tensor([1.0, 2, 3, 4, 5]) + 7
    train[..., 4] = 2.5  # a constant dimension: centred, not divided by zero
    test = torch.randn(2, 3, 3, 5, generator=gen)
    got_train, got_test = dl.standardise(train, test)
    flat = got_train.reshape(-1, 5)
    assert torch.allclose(flat.mean(0), torch.zeros(5), atol=1e-5)
    assert torch.allclose(flat[:, :4].std(0), torch.ones(4), atol=1e-5)
    assert torch.equal(flat[:, 4], torch.zeros(36))
    mean, std = train.reshape(-1, 5).mean(0), train.reshape(-1, 5).std(0)
    assert torch.allclose(got_test[..., :4], ((test - mean) / std)[..., :4], atol=1e-5)


def spec_for(masked, **kwargs):
    fields = dict(
        train_data=masked["train"],
        data=masked["heldout"],
        max_samples=0,
        classes="",
        val_fraction=0.2,
        weight_decays=[1e-4, 1e-2, 1.0],
    )
    return SimpleNamespace(**{**fields, **kwargs})


def test_oracle_features_segment_and_the_penalty_is_chosen_on_held_out_images(masked, monkeypatch):
    """With each patch's feature the one-hot of its majority label (plus a constant), the probe
    labels the pixels about as the patch labels do; the penalty reported is the best of the
    sweep on held-out training images, refitted on all of them."""
    transform = CropResize(64, "center")
    train = dk.read_masked(masked["train"], transform)
    test = dk.read_masked(masked["heldout"], transform)
    cache = [train["masks"], test["masks"]]

    def oracle(model, images, device, batch_size=64):
        masks = next(m for m in cache if len(m) == len(images))
        labels = dk.patch_labels(masks, (8, 8), 6)
        return F.normalize(F.one_hot(labels.clamp(min=0), 6).float() + 0.1, dim=-1)

    monkeypatch.setattr(dk, "patch_features", oracle)
    result = dl.dense_linear(torch.nn.Identity(), "cpu", transform, spec_for(masked))
    curve, chosen = result["val_miou"], result["metrics"]["weight_decay"]
    assert sorted(curve) == [1e-4, 1e-2, 1.0]
    assert curve[chosen] == max(curve.values()) and curve[1e-4] > curve[1.0]
    # the same as refitting the chosen penalty on every training image by hand, on features
    # standardised by the training patches' statistics
    feat, test_feat = oracle(None, train["images"], "cpu"), oracle(None, test["images"], "cpu")
    flat = feat.flatten(0, 2)
    mean, std = flat.mean(0), flat.std(0)
    feat, test_feat = (feat - mean) / std, (test_feat - mean) / std
    weight, bias = dl.fit_patches(feat, train["masks"], 6, chosen)
    pred = dl.pixel_labels(test_feat, weight, bias, 64)
    want = dk.segmentation_metrics(pred, test["masks"], MASK_CLASSES)
    assert result["metrics"]["miou"] == pytest.approx(want["metrics"]["miou"])
    knn = dk.dense_knn(
        torch.nn.Identity(),
        "cpu",
        transform,
        SimpleNamespace(**vars(spec_for(masked)), k=5, temperature=0.1),
    )
    # bilinear logits blur a one-patch shape into its ground a little, where kNN's nearest
    # spreading keeps the patch whole: 0.60 against 0.63 here
    assert 0.5 < result["metrics"]["miou"] < knn["metrics"]["miou"]
    assert result["classnames"] == MASK_CLASSES and result["skipped"] == {}
    # one penalty: no sweep, that penalty
    one = dl.dense_linear(
        torch.nn.Identity(), "cpu", transform, spec_for(masked, weight_decays=[0.5])
    )
    assert one["metrics"]["weight_decay"] == 0.5 and one["val_miou"] == {}


def test_dense_linear_needs_masked_training_shards(tmp_path):
    from vlcontrast import config as config_lib
    from vlcontrast.eval.runner import check_evaluators

    cfg = config_lib.load(None, [])
    cfg.eval.evaluators = [EvaluatorConfig(kind="dense_linear", data=str(tmp_path / "x.tar"))]
    with pytest.raises(ConfigError, match=r"train_data: dense_linear needs"):
        check_evaluators(cfg)
    cfg.eval.evaluators[0].train_data = str(tmp_path / "y.tar")
    with pytest.raises(ConfigError, match=r"evaluators\[0\]\.data \(dense_linear\): no shard"):
        check_evaluators(cfg)


def test_eval_dense_linear_through_the_cli(tmp_path, capsys):
    out = tmp_path / "masks"
    assert cli.main(["data", "masks", str(out), "--train", "16", "--heldout", "6"]) == 0
    run = tmp_path / "run"
    args = [
        "train",
        "model.kind=image",
        "objective.name=simclr",
        "image.model=test_vit",
        "image.image_size=32",
        "image.model_kwargs={patch_size: 8, depth: 1, embed_dim: 32, num_heads: 2}",
        f"data.train_shards={out}/train/00000.tar",
        "data.batch_size=8",
        "data.num_workers=0",
        "train.steps=1",
        "views.preset=small",
        f"train.output_dir={run}",
        "train.progress=false",
        "train.tensorboard=false",
    ]
    assert cli.main(args) == 0
    report = tmp_path / "linear.json"
    command = ["eval", "dense-linear", "--checkpoint", str(run / "latest")]
    data = ["--train-data", f"{out}/train/00000.tar", "--data", f"{out}/heldout/00000.tar"]
    assert (
        cli.main([*command, *data, "--weight-decays", "1e-3", "1e-1", "--json", str(report)]) == 0
    )
    printed = capsys.readouterr().out
    assert "miou" in printed and "weight_decay" in printed
    result = json.loads(report.read_text())["dense_linear"]
    assert 0 <= result["metrics"]["miou"] <= 1 and result["classnames"] == MASK_CLASSES
    assert result["metrics"]["weight_decay"] in (1e-3, 1e-1) and len(result["val_miou"]) == 2
    assert (tmp_path / "linear.confusion.png").is_file()
