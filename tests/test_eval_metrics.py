"""Evaluation metrics against hand-worked answers and independent dense/loop references."""

import pytest
import torch
import torch.nn.functional as F

from vlcontrast.config import EvaluatorConfig
from vlcontrast.eval.knn import knn_scores
from vlcontrast.eval.linear_probe import fit_logistic, linear_probe, logistic_objective
from vlcontrast.eval.metrics import (
    classification_metrics,
    confusion_matrix,
    retrieval_metrics,
    retrieval_ranks,
    topk_accuracy,
)
from vlcontrast.eval.zeroshot import ensemble_prompts, zeroshot_classifier


def scores_as_embeddings(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """img_emb = identity, txt_emb = rows of ``scores``: txt_emb @ img_emb.T == scores."""
    return torch.eye(scores.shape[1]), scores.clone()


def test_recall_on_a_hand_written_similarity_matrix():
    # 3 images, 4 captions: captions 0,1 describe image 0, caption 2 image 1, caption 3 image 2.
    scores = torch.tensor(
        [
            [0.9, 0.1, 0.0],  # caption 0 -> image 0 ranked 1st (rank 0)
            [0.2, 0.5, 0.3],  # caption 1 -> image 0 ranked 3rd (rank 2)
            [0.6, 0.4, 0.5],  # caption 2 -> image 1 ranked 3rd (rank 2)
            [0.1, 0.7, 0.8],  # caption 3 -> image 2 ranked 1st (rank 0)
        ]
    )
    img_emb, txt_emb = scores_as_embeddings(scores)
    txt_image = torch.tensor([0, 0, 1, 2])
    out = retrieval_metrics(img_emb, txt_emb, txt_image, ks=(1, 2))
    assert out["text_to_image/R@1"] == pytest.approx(2 / 4)
    assert out["text_to_image/R@2"] == pytest.approx(2 / 4)
    assert out["text_to_image/median_rank"] == 2.0  # floor(median(0, 2, 2, 0)) + 1
    # image -> captions (columns of scores): image 0 scores [0.9,0.2,0.6,0.1], own {0,1}: best
    # own 0.9 is top (rank 0). image 1 [0.1,0.5,0.4,0.7], own {2}=0.4: 0.5,0.7 higher (rank 2).
    # image 2 [0.0,0.3,0.5,0.8], own {3}=0.8 is top (rank 0).
    assert out["image_to_text/R@1"] == pytest.approx(2 / 3)
    assert out["image_to_text/R@2"] == pytest.approx(2 / 3)
    assert out["image_to_text/median_rank"] == 1.0
    assert out["images"] == 3 and out["captions"] == 4


def test_ties_count_in_favour_of_the_correct_item():
    # caption 0 scores images 0 and 1 equally; it belongs to image 1, image 0 has caption 1
    img_emb, txt_emb = scores_as_embeddings(torch.tensor([[0.5, 0.5], [0.9, 0.5]]))
    i2t, t2i = retrieval_ranks(img_emb, txt_emb, torch.tensor([1, 0]))
    assert t2i.tolist() == [0, 0] and i2t.tolist() == [0, 0]


def dense_ranks(queries, keys, target_mask):
    """Independent reference: full matrix, argsort, position of the first correct key."""
    order = (queries @ keys.T).argsort(dim=1, descending=True, stable=True)  # (Q, K)
    hits = torch.gather(target_mask, 1, order)  # (Q, K) correct-key mask in ranked order
    return hits.float().argmax(dim=1)


@pytest.mark.parametrize("block", [1, 3, 7, 1000])
def test_blockwise_retrieval_equals_the_dense_computation(block):
    gen = torch.Generator().manual_seed(0)
    img_emb = F.normalize(torch.randn(23, 8, generator=gen), dim=-1)
    # every image has 1 to 4 captions, in shuffled order
    txt_image = torch.cat([torch.arange(23), torch.randint(0, 23, (28,), generator=gen)])
    txt_image = txt_image[torch.randperm(51, generator=gen)]
    txt_emb = F.normalize(img_emb[txt_image] + 0.8 * torch.randn(51, 8, generator=gen), dim=-1)
    got = retrieval_metrics(img_emb, txt_emb, txt_image, block=block)
    own = txt_image.unsqueeze(0) == torch.arange(23).unsqueeze(1)  # (N, T)
    t2i = dense_ranks(txt_emb, img_emb, own.T)
    i2t = dense_ranks(img_emb, txt_emb, own)
    for k in (1, 5, 10):
        assert got[f"text_to_image/R@{k}"] == pytest.approx((t2i < k).float().mean().item())
    for k in (1, 5, 10):
        assert got[f"image_to_text/R@{k}"] == pytest.approx((i2t < k).float().mean().item())
    with pytest.raises(ValueError, match="image 3 has no caption"):
        retrieval_metrics(img_emb, txt_emb, txt_image.masked_fill(txt_image == 3, 0))
    assert got["text_to_image/median_rank"] == float(t2i.float().quantile(0.5).floor() + 1)
    assert 0 < got["text_to_image/R@1"] < got["text_to_image/R@10"] < 1  # a non-trivial case


def test_classification_metrics_on_a_known_example():
    # 3 classes; labels [0,0,0,1,2,2]; predictions [0,1,0,1,1,2].
    labels = torch.tensor([0, 0, 0, 1, 2, 2])
    preds = torch.tensor([0, 1, 0, 1, 1, 2])
    logits = F.one_hot(preds, 3).float()
    result = classification_metrics(logits, labels, ["a", "b", "c"])
    assert result["metrics"]["top1"] == pytest.approx(4 / 6)
    assert result["metrics"]["mean_per_class_recall"] == pytest.approx((2 / 3 + 1 + 1 / 2) / 3)
    assert result["confusion"] == [[2, 1, 0], [0, 1, 0], [0, 1, 1]]
    assert result["per_class"]["c"] == {"accuracy": 0.5, "n": 2}
    assert confusion_matrix(preds, labels, 3).sum().item() == 6


def test_topk_accuracy_counts_a_label_within_the_k_best():
    logits = torch.tensor([[0.1, 0.5, 0.4], [0.9, 0.02, 0.08]])
    labels = torch.tensor([2, 1])
    assert topk_accuracy(logits, labels, ks=(1, 2, 3)) == {"top1": 0.0, "top2": 0.5, "top3": 1.0}


def test_prompt_ensembling_is_mean_of_unit_embeddings_then_renormalised():
    gen = torch.Generator().manual_seed(0)
    raw = torch.randn(4, 3, 6, generator=gen) * torch.rand(4, 3, 1, generator=gen) * 5  # (C,T,D)
    got = ensemble_prompts(raw)
    for c in range(4):
        mean = sum(raw[c, t] / raw[c, t].norm() for t in range(3)) / 3
        assert torch.allclose(got[c], mean / mean.norm(), atol=1e-6)


class PromptEmbedder:
    """A stand-in for Embedder.texts: each prompt's embedding is its class direction plus a
    template-specific offset, so the ensemble and the classifier have a known answer."""

    def __init__(self, classnames, templates, dim=8):
        self.directions = {
            name: F.one_hot(torch.tensor(c), dim).float() for c, name in enumerate(classnames)
        }
        gen = torch.Generator().manual_seed(1)
        self.offsets = {t: 0.3 * torch.randn(dim, generator=gen) for t in templates}
        self.templates = templates
        self.calls = []

    def texts(self, prompts):
        self.calls.append(list(prompts))
        rows = []
        for prompt in prompts:
            template = next(
                t for t in self.templates if prompt in [t.format(n) for n in self.directions]
            )
            name = next(n for n in self.directions if template.format(n) == prompt)
            rows.append(F.normalize(self.directions[name] + self.offsets[template], dim=-1))
        return torch.stack(rows)


def test_zeroshot_on_class_directions_is_perfect_and_uses_every_template():
    classnames = ["cat", "dog", "fish", "bird", "ant"]
    templates = ["a photo of a {}.", "a drawing of a {}.", "itap of a {}."]
    embedder = PromptEmbedder(classnames, templates)
    cls_emb = zeroshot_classifier(embedder, classnames, templates)  # (C, D)
    prompts = embedder.calls[0]
    assert len(prompts) == 15 and prompts[:3] == [t.format("cat") for t in templates]
    expected = ensemble_prompts(embedder.texts(prompts).view(5, 3, -1))
    assert torch.allclose(cls_emb, expected)
    gen = torch.Generator().manual_seed(2)
    labels = torch.randint(0, 5, (200,), generator=gen)
    img_emb = F.normalize(F.one_hot(labels, 8).float() + 0.2 * torch.randn(200, 8, generator=gen))
    result = classification_metrics(img_emb @ cls_emb.T, labels, classnames)
    assert result["metrics"]["top1"] == 1.0 and result["metrics"]["mean_per_class_recall"] == 1.0


def knn_reference(train_x, train_y, test_x, num_classes, k, temperature):
    """Loop over test points: sort all similarities, vote with the k best."""
    out = torch.zeros(len(test_x), num_classes)
    for i, q in enumerate(test_x):
        sims = [(float(q @ x), int(y)) for x, y in zip(train_x, train_y, strict=True)]
        for sim, y in sorted(sims, reverse=True)[:k]:
            out[i, y] += torch.exp(torch.tensor(sim / temperature))
    return out


@pytest.mark.parametrize("k, block", [(1, 4), (5, 3), (200, 1000)])
def test_knn_matches_a_loop_reference(k, block):
    gen = torch.Generator().manual_seed(0)
    train_x = F.normalize(torch.randn(40, 6, generator=gen), dim=-1)
    train_y = torch.randint(0, 4, (40,), generator=gen)
    test_x = F.normalize(torch.randn(11, 6, generator=gen), dim=-1)
    got = knn_scores(train_x, train_y, test_x, 4, k=k, temperature=0.1, block=block)
    want = knn_reference(train_x, train_y, test_x, 4, k, 0.1)
    assert torch.allclose(got, want, rtol=1e-4)


def test_knn_blocks_shrink_under_the_similarity_budget(monkeypatch):
    """A bank too large for the budget is scored a few test points at a time, same scores."""
    import vlcontrast.eval.knn as knn

    gen = torch.Generator().manual_seed(1)
    train_x = F.normalize(torch.randn(50, 6, generator=gen), dim=-1)
    train_y = torch.randint(0, 4, (50,), generator=gen)
    test_x = F.normalize(torch.randn(9, 6, generator=gen), dim=-1)
    want = knn_reference(train_x, train_y, test_x, 4, 5, 0.1)
    seen = []
    matmul = torch.Tensor.__matmul__
    monkeypatch.setattr(knn, "SIM_BUDGET", 100)  # 2 test points a block of a 50-point bank
    monkeypatch.setattr(
        torch.Tensor, "__matmul__", lambda a, b: seen.append(len(a)) or matmul(a, b)
    )
    got = knn_scores(train_x, train_y, test_x, 4, k=5, temperature=0.1)
    monkeypatch.undo()
    assert seen == [2, 2, 2, 2, 1]
    assert torch.allclose(got, want, rtol=1e-4)


def clusters(n_per_class: int, num_classes: int, dim: int, noise: float, seed: int):
    gen = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(num_classes, dim, generator=gen), dim=-1)
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    x = F.normalize(centres[labels] + noise * torch.randn(len(labels), dim, generator=gen), dim=-1)
    return x, labels


def test_knn_and_linear_probe_separate_well_separated_clusters():
    train_x, train_y = clusters(20, 4, 16, 0.1, seed=0)
    test_x, test_y = clusters(10, 4, 16, 0.1, seed=0)
    test_x = F.normalize(test_x + 0.05 * torch.randn_like(test_x), dim=-1)
    scores = knn_scores(train_x, train_y, test_x, 4, k=10)
    assert topk_accuracy(scores, test_y, ks=(1,))["top1"] == 1.0
    probe = linear_probe(train_x, train_y, test_x, 4, [1e-4, 1e-2], val_fraction=0.25)
    assert topk_accuracy(probe["logits"], test_y, ks=(1,))["top1"] == 1.0


def test_logistic_fit_reaches_the_optimum_of_the_regularised_objective():
    """Strictly convex for weight_decay > 0: the gradient at the returned solution is ~0 (an
    optimality check independent of how the solver got there), on overlapping classes."""
    x, y = clusters(30, 3, 5, 1.0, seed=3)
    weight, bias = fit_logistic(x, y, 3, weight_decay=1e-2)
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    logistic_objective(x, y, weight, bias, 1e-2).backward()
    assert weight.grad.abs().max() < 1e-4 and bias.grad.abs().max() < 1e-4
    # A stronger penalty gives a smaller weight norm: the penalty is actually applied.
    strong, _ = fit_logistic(x, y, 3, weight_decay=1.0)
    assert strong.norm() < weight.norm()


def test_the_chunked_objective_equals_the_full_batch_one_and_its_autograd(monkeypatch):
    """The fit's objective and gradient, a few rows of logits at a time (10 rows in chunks of
    3, and an empty share), against logistic_objective on all rows and autograd."""
    from vlcontrast.eval import linear_probe as lp

    x, y = clusters(5, 2, 6, 1.0, seed=5)
    g = torch.Generator().manual_seed(1)
    weight = torch.randn(6, 2, generator=g, requires_grad=True)
    bias = torch.randn(2, generator=g, requires_grad=True)
    logistic_objective(x, y, weight, bias, 0.3).backward()
    want = (weight.grad.clone(), bias.grad.clone())
    monkeypatch.setattr(lp, "CHUNK_ROWS", 3)
    value = lp.objective_and_gradient(x, y, weight, bias, 0.3, total=len(y))
    assert value.item() == pytest.approx(logistic_objective(x, y, weight, bias, 0.3).item())
    torch.testing.assert_close((weight.grad, bias.grad), want)
    value = lp.objective_and_gradient(x[:0], y[:0], weight, bias, 0.3, total=len(y))
    torch.testing.assert_close(weight.grad, 0.3 * weight.detach())  # the penalty's alone
    assert bias.grad.abs().max() == 0


def test_linear_probe_sweep_picks_the_best_validation_penalty():
    x, y = clusters(30, 3, 5, 0.6, seed=4)
    probe = linear_probe(x, y, x, 3, [1e-5, 1e-3, 100.0], val_fraction=0.3)
    curve = probe["val_accuracy"]
    assert set(curve) == {1e-5, 1e-3, 100.0}
    best = max(curve.values())
    assert curve[probe["weight_decay"]] == best
    assert probe["weight_decay"] == max(wd for wd, acc in curve.items() if acc == best)


def test_the_sweep_shows_a_bar_over_the_penalty_fits_only_when_asked(capsys):
    from vlcontrast.eval.linear_probe import sweep_curve

    x, y = clusters(30, 3, 5, 0.6, seed=4)
    quiet = sweep_curve(x, y, 3, [1e-3, 1.0], 0.3)
    assert "fit each penalty" not in capsys.readouterr().err
    shown = sweep_curve(x, y, 3, [1e-3, 1.0], 0.3, progress=True)
    err = capsys.readouterr().err
    assert "probe: fit each penalty" in err and "/2 [" in err  # drawn at 0/2, over 2 fits
    assert shown == quiet  # the bar changes nothing else


def test_evaluator_config_defaults_follow_the_protocols():
    from vlcontrast.cli import build_parser
    from vlcontrast.eval_config import neighbours

    spec = EvaluatorConfig(kind="knn")
    assert neighbours(spec) == 200 and spec.temperature == 0.1  # Wu et al. 2018, DINO
    assert neighbours(EvaluatorConfig(kind="dense_knn")) == 30  # Hummingbird's evaluation
    assert neighbours(EvaluatorConfig(kind="dense_knn", k=7)) == 7
    for kind, k in (("knn", 200), ("dense-knn", 30)):  # the command line shows the same
        args = ["eval", kind, "--checkpoint", "c", "--data", "d", "--train-data", "t"]
        assert build_parser().parse_args(args).k == k


def test_the_confusion_png_labels_both_axes_and_keeps_its_title_inside(tmp_path):
    from PIL import Image

    from vlcontrast.eval.report import save_confusion_png

    names = ["zero", "one", "two", "three", "four"]
    confusion = [[10 if i == j else 1 for j in range(5)] for i in range(5)]
    save_confusion_png(confusion, names, tmp_path / "c.png")
    image = Image.open(tmp_path / "c.png").convert("L")
    width, height = image.size
    assert width >= 6 * len("confusion matrix: rows = true class, columns = predicted class")
    pixels = image.load()
    # the column labels: ink above each column, between the title and the matrix
    top = 40 + 6 * len("three") + 8
    for column in range(5):
        x0 = 6 * len("three") + 8 + column * 24
        band = [pixels[x, y] for x in range(x0, x0 + 24) for y in range(36, top)]
        assert min(band) < 128, f"column {column} has no label"
