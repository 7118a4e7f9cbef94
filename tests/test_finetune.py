"""Fine-tuning a CLIP through its zero-shot head (objectives/finetune.py) and the WiSE-FT curve
(eval/wiseft.py): the head is the zero-shot classifier, the loss is textbook cross-entropy over
the labelled rows, the text tower and head stay fixed so the fine-tuned checkpoint's zero-shot
classifier is the trained one, a killed run resumes exactly, and `weights wiseft` scores every
alpha (its ends equal evaluating A and B) with a JSON and a PNG."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import crash_after, run_file, tiny_overrides
from tests.references import textbook_cross_entropy
from vlcontrast import cli
from vlcontrast import config as config_lib
from vlcontrast.embed import Embedder
from vlcontrast.eval.zeroshot import zeroshot_classifier
from vlcontrast.models import build_model
from vlcontrast.models.text_tower import load_tokenizer
from vlcontrast.objectives import build_objective
from vlcontrast.train import checkpoint
from vlcontrast.train.metrics_log import read_jsonl


def classes_file(corpus) -> str:
    return corpus["heldout_shards"].rsplit("/", 1)[0] + "/classes.json"


def finetune_overrides(corpus, out, steps=4, *extra):
    return [
        *tiny_overrides(corpus, out, steps),
        "objective.name=finetune",
        f"objective.finetune.classes={classes_file(corpus)}",
        *extra,
    ]


def test_the_head_is_the_zero_shot_classifier_and_the_loss_is_cross_entropy(corpus, tmp_path):
    cfg = config_lib.resolve(config_lib.load(None, finetune_overrides(corpus, tmp_path)))
    torch.manual_seed(0)
    model = build_model(cfg)
    task = build_objective(cfg.objective)
    task.setup(model, cfg, 16)
    classnames, templates = json.loads(open(classes_file(corpus)).read()).values()
    tokenizer = load_tokenizer(cfg.text)
    want = zeroshot_classifier(Embedder.from_model(model, tokenizer, cfg), classnames, templates)
    torch.testing.assert_close(task.head, want)
    assert task.head.shape == (30, 16)
    assert not any(p.requires_grad for p in model.text.parameters())

    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=gen)
    labels = torch.tensor([0, 29, -1, 5, 30, 5])  # -1 and 30 are no class: left out
    task.train()
    out = task.loss(task({"images": images, "labels": labels}), {"labels": labels})
    out["loss"].backward()
    emb = model(images=images)
    reference = textbook_cross_entropy(emb["logit_scale"] * emb["img_emb"] @ want.T, labels)
    torch.testing.assert_close(out["loss"], reference)
    assert float(out["metrics"]["labelled"]) == pytest.approx(4 / 6)
    assert all(p.grad is None for p in model.text.parameters())
    assert model.image.proj.weight.grad.abs().sum() > 0 and model.logit_scale.grad is not None


def test_finetuning_keeps_the_text_tower_resumes_exactly_and_wiseft_scores_the_alphas(
    corpus, tmp_path, monkeypatch, capsys
):
    base = tmp_path / "base"
    assert cli.main(["train", run_file(base), *tiny_overrides(corpus, base, 4)]) == 0
    start = checkpoint.latest(base / "checkpoints")
    tuned, parted = tmp_path / "tuned", tmp_path / "parted"
    args = [*finetune_overrides(corpus, tuned, 4, f"model.init_from={start}", "optim.lr=1e-3")]
    assert cli.main(["train", run_file(tuned), *args]) == 0
    end = checkpoint.latest(tuned / "checkpoints")
    a, b = load_file(start / "model.safetensors"), load_file(end / "model.safetensors")
    text = [k for k in a if k.startswith("text.")]
    assert text and all(torch.equal(a[k], b[k]) for k in text)  # the head's source is fixed
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("image."))
    rows = [r for r in read_jsonl(tuned / "metrics.jsonl") if "train/loss" in r]
    assert len(rows) == 4 and all(r["train/labelled"] == 1.0 for r in rows)

    restore = crash_after(monkeypatch, 3)  # killed after the step-2 checkpoint
    parted_args = finetune_overrides(corpus, parted, 4, f"model.init_from={start}", "optim.lr=1e-3")
    with pytest.raises(KeyboardInterrupt):
        cli.main(["train", run_file(parted), *parted_args])
    restore()
    assert cli.main(["train", run_file(parted), *parted_args, "train.resume=latest"]) == 0
    resumed = load_file(checkpoint.latest(parted / "checkpoints") / "model.safetensors")
    assert all(torch.equal(resumed[k], b[k]) for k in b)

    capsys.readouterr()
    out = tmp_path / "wiseft"
    heldout = corpus["heldout_shards"]
    command = ["weights", "wiseft", str(start), str(end), "--data", heldout, "--out", str(out)]
    assert cli.main([*command, "--alphas", "0,0.5,1", "--workers", "0"]) == 0
    printed = capsys.readouterr().out
    curve = json.loads((out / "wiseft.json").read_text())
    assert curve["alphas"] == [0.0, 0.5, 1.0] and (out / "wiseft.png").stat().st_size > 1000
    assert "| 0.50 |" in printed and "keep it: vlcontrast weights interpolate" in printed
    for alpha, ckpt in ((0.0, start), (1.0, end)):  # the ends: evaluating A and B themselves
        report = tmp_path / f"eval{alpha}.json"
        evaluate = ["eval", "zeroshot", "--checkpoint", str(ckpt), "--data", heldout]
        assert cli.main([*evaluate, "--workers", "0", "--json", str(report)]) == 0
        top1 = json.loads(report.read_text())["zeroshot"]["metrics"]["top1"]
        assert curve["top1"][heldout][curve["alphas"].index(alpha)] == pytest.approx(top1)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["model.kind=image"], "model.kind: objective 'finetune' makes its head"),
        (["objective.finetune.classes="], "objective.finetune.classes: the training shards"),
        (["objective.finetune.templates=[nothing]"], "objective.finetune.classes"),
    ],
)
def test_a_bad_setting_is_one_message_before_anything_is_written(
    corpus, tmp_path, capsys, extra, message
):
    out = tmp_path / "run"
    args = ["train", run_file(tmp_path / "file"), *finetune_overrides(corpus, out, 2, *extra)]
    assert cli.main(args) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_wiseft_refuses_bad_alphas_and_missing_data(saved_checkpoint, tmp_path, capsys):
    out = tmp_path / "w"
    ckpt = str(saved_checkpoint)
    assert cli.main(["weights", "wiseft", ckpt, ckpt, "--out", str(out)]) == 2
    assert "--data: give at least one" in capsys.readouterr().err
    bad = ["weights", "wiseft", ckpt, ckpt, "--data", "x", "--alphas", "0,2", "--out", str(out)]
    assert cli.main(bad) == 2
    assert "every alpha must be in [0, 1]" in capsys.readouterr().err
    assert cli.main(["weights", "interpolate", ckpt, ckpt, "--out", str(out)]) == 2
    assert "--alpha: interpolate needs" in capsys.readouterr().err
    assert not out.exists()
