"""Sentence embeddings (issue 25's text side): the in-batch-negatives loss against a textbook
loop, text-pair shards from a table, the text_pairs task and SimCSE through the CLI, and
``vlcontrast eval sts`` against a rank correlation written here."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from tests.references import textbook_in_batch_negatives
from vlcontrast.eval.sts import average_ranks, spearman
from vlcontrast.losses.pairs import in_batch_negatives_loss


def unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("hard", [0, 2])
def test_in_batch_negatives_equals_the_textbook_loop_in_value_and_gradient(symmetric, hard):
    a, p = unit(6, 5, seed=1).requires_grad_(), unit(6, 5, seed=2).requires_grad_()
    n = unit(6, hard, 5, seed=3).requires_grad_() if hard else None
    inputs = [a, p] + ([n] if hard else [])
    got = in_batch_negatives_loss(a, p, n, 0.1, symmetric)
    want = textbook_in_batch_negatives(a, p, n, 0.1, symmetric)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for gx, wx in zip(
        torch.autograd.grad(got, inputs), torch.autograd.grad(want, inputs), strict=True
    ):
        torch.testing.assert_close(gx, wx, rtol=1e-10, atol=1e-12)


def test_perfect_pairs_at_temperature_t_give_the_closed_form():
    """Orthonormal pairs, positive = anchor: log(1 + (N-1) e^{-1/T}) per anchor."""
    e = torch.eye(4, dtype=torch.float64)
    loss = in_batch_negatives_loss(e, e, temperature=0.5)
    assert float(loss) == pytest.approx(math.log(1 + 3 * math.exp(-2.0)))


def brute_spearman(x, y):
    """Ranks by counting (ties: mean position), then Pearson's r written out."""

    def ranks(v):
        return [sum(1 for w in v if w < u) + (sum(1 for w in v if w == u) + 1) / 2 for u in v]

    rx, ry = ranks(list(x)), ranks(list(y))
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    vx = sum((a - mx) ** 2 for a in rx)
    vy = sum((b - my) ** 2 for b in ry)
    return cov / math.sqrt(vx * vy)


def test_spearman_with_ties_equals_the_counting_definition():
    x = torch.tensor([0.3, 0.1, 0.3, 0.9, -0.2, 0.1, 0.5])
    y = torch.tensor([2.0, 1.0, 3.0, 5.0, 0.0, 1.0, 2.0])
    assert average_ranks(torch.tensor([5.0, 1.0, 5.0])).tolist() == [2.5, 1.0, 2.5]
    assert spearman(x, y) == pytest.approx(brute_spearman(x.tolist(), y.tolist()), abs=1e-12)
    assert spearman(y, y) == pytest.approx(1.0)


def text_run(corpus, out_dir, shards, steps=3) -> list[str]:
    """A tiny text-only run (the BERT of tiny_overrides, dropout 0.1) on ``shards``."""
    from tests.conftest import run_file, tiny_overrides

    overrides = [o for o in tiny_overrides(corpus, out_dir, steps) if not o.startswith("image.")]
    overrides = [o for o in overrides if not o.startswith("data.train_shards")]
    return [
        "train",
        run_file(out_dir),
        *overrides,
        f"data.train_shards={shards}",
        "data.batch_size=8",
        "model.kind=text",
        "objective.name=text_pairs",
    ]


COLOURS = ["red", "green", "blue", "yellow", "purple", "orange"]
SHAPES = ["circle", "square", "triangle"]


def write_pairs_table(path):
    lines = ["anchor\tpositive\tnegative"]
    for i, (c, s) in enumerate((c, s) for c in COLOURS for s in SHAPES):
        other = COLOURS[(COLOURS.index(c) + 1) % len(COLOURS)]
        lines.append(f"a {c} {s}\tthe {s} is {c}\ta {other} {s}")
        if i == 3:
            lines.append(f"\tno anchor here\ta {c} {s}")  # skipped and counted
    path.write_text("\n".join(lines) + "\n")


def write_sts_table(path):
    rows = ["sentence1\tsentence2\tscore"]
    for i, c in enumerate(COLOURS):
        rows.append(f"a {c} circle\tthe circle is {c}\t{5 - i % 2}")
        rows.append(f"a {c} circle\ta {COLOURS[i - 1]} square\t{i % 3}")
    rows.append("a red circle\tthe circle is red\tnot a number")  # skipped and counted
    path.write_text("\n".join(rows) + "\n")


def test_pairs_from_a_table_train_score_sts_and_are_searchable(corpus, tmp_path, capsys):
    from vlcontrast import cli
    from vlcontrast.models import TextEncoder
    from vlcontrast.models.load import load_model
    from vlcontrast.train import checkpoint
    from vlcontrast.train.metrics_log import read_jsonl

    table, shards = tmp_path / "pairs.tsv", tmp_path / "pairs"
    write_pairs_table(table)
    args = ["data", "pairs", "--table", str(table), "--out", str(shards)]
    assert cli.main([*args, "--negative-columns", "negative", "--per-shard", "10"]) == 0
    out = capsys.readouterr().out
    assert "18 pairs in 2 shard(s)" in out and "empty_anchor_or_positive" in out
    run = tmp_path / "run"
    pattern = f"{shards}/{{00000..00001}}.tar"
    assert cli.main([*text_run(corpus, run, pattern), "objective.text_pairs.negatives=1"]) == 0
    rows = [r for r in read_jsonl(run / "metrics.jsonl") if "train/loss" in r]
    assert len(rows) == 3 and all(math.isfinite(r["train/loss"]) for r in rows)
    assert all(0 <= r["train/pair_top1"] <= 1 for r in rows)
    ckpt = checkpoint.latest(run / "checkpoints")
    model, tokenizer, cfg = load_model(ckpt)
    assert isinstance(model, TextEncoder) and tokenizer is not None

    sts, report = tmp_path / "sts.tsv", tmp_path / "sts.json"
    write_sts_table(sts)
    args = ["eval", "sts", "--checkpoint", str(ckpt), "--data", str(sts), "--json", str(report)]
    assert cli.main(args) == 0
    result = json.loads(report.read_text())["sts"]
    assert result["metrics"]["pairs"] == 12 and result["skipped"] == {"bad_score": 1}
    # the figure is the rank correlation of the model's cosines with the gold scores
    from vlcontrast.embed import Embedder
    from vlcontrast.eval.sts import read_pairs

    first, second, scores, _ = read_pairs(str(sts), ["sentence1", "sentence2"], "score")
    embedder = Embedder.from_model(model, tokenizer, cfg)
    cosine = (embedder.texts(first) * embedder.texts(second)).sum(-1)
    want = 100 * brute_spearman(cosine.tolist(), scores)
    assert result["metrics"]["spearman"] == pytest.approx(want, abs=1e-6)

    index = tmp_path / "index"
    args = ["index", "build", "--checkpoint", str(ckpt), "--data", pattern, "--out", str(index)]
    assert cli.main([*args, "--workers", "0"]) == 0
    capsys.readouterr()
    assert cli.main(["search", str(index), "a red circle", "-k", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(hits) == 3 and all(h["caption"] for h in hits)
    # the top hit is the anchor text nearest the query by the model's own embeddings
    texts = [f"a {c} {s}" for c in COLOURS for s in SHAPES]
    emb = embedder.texts(texts)
    best = texts[int((emb @ embedder.texts(["a red circle"])[0]).argmax())]
    assert hits[0]["caption"] == best


def test_simcse_trains_on_caption_shards_through_the_cli(corpus, tmp_path):
    from vlcontrast import cli
    from vlcontrast.train.metrics_log import read_jsonl

    args = [*text_run(corpus, tmp_path, corpus["train_shards"]), "objective.text_pairs.mode=simcse"]
    assert cli.main(args) == 0
    rows = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if "train/loss" in r]
    # two dropout masks: the positive differs from the anchor, so the loss is not log-free zero
    assert len(rows) == 3 and all(
        math.isfinite(r["train/loss"]) and r["train/loss"] > 0 for r in rows
    )


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.kind=dual", "model.kind: objective 'text_pairs' trains the text tower alone"),
        ("objective.text_pairs.mode=simcse objective.text_pairs.negatives=1", "simcse mode has"),
    ],
)
def test_a_text_run_that_cannot_work_is_one_message(corpus, tmp_path, capsys, override, message):
    from vlcontrast import cli

    args = [*text_run(corpus, tmp_path, corpus["train_shards"]), *override.split()]
    assert cli.main(args) == 2
    assert message in capsys.readouterr().err
