"""Every config mistake that train finds is one line naming the key, before anything is written."""

from __future__ import annotations

import pytest

from tests.conftest import run_file, tiny_overrides
from vlcontrast import cli


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lr=-1", "optim.lr: expected a positive number"),
        ("optim.lr=nan", "optim.lr: expected a finite number"),
        ("optim.lr=1e39", "optim.lr: expected a finite number"),
        ("optim.beta1=2", "optim.beta1: expected a number in [0.0, 1.0)"),
        ("image.model=test_resnett", "image.model: timm has no model 'test_resnett'; did you mean"),
        ("text.tokenizer=/no/such/tokenizer", "text.tokenizer: /no/such/tokenizer does not exist"),
        (
            "text.config.num_attention_heads=5",
            "text.config: The hidden size (32) is not a multiple",
        ),
        (
            "text.context_length=64",
            "text.context_length: 64 tokens, but the text tower has only 32",
        ),
        ("eval.evaluators=[{kind: zeroshot}]", "eval.evaluators[0].data: set the evaluation set"),
        ("eval.evaluators=[{kind: knn, data: x.tar}]", "eval.evaluators[0].train_data:"),
        ("eval.evaluators=[{data: '/no/such/{0..1}.tar'}]", "2 of the 2 shard(s) of"),
        ("data.train_shards=/no/such/{0..3}.tar", "4 of the 4 shard(s) named do not exist"),
        (
            "image.model_kwargs.checkpoint_path=w.pth",
            "image.model_kwargs.checkpoint_path: timm would fetch or read weights by it",
        ),
    ],
)
def test_each_config_mistake_is_one_line_naming_the_key(
    corpus, tmp_path, capsys, override, message
):
    overrides = [*tiny_overrides(corpus, tmp_path, steps=1), override]
    assert cli.main(["train", run_file(tmp_path), *overrides]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "metrics.jsonl").exists()  # stopped before step 1


def test_an_evaluator_template_with_an_unknown_field_stops_before_training(
    corpus, tmp_path, capsys
):
    spec = (
        f"[{{kind: zeroshot, data: '{corpus['heldout_shards']}', templates: ['a {{}} {{foo}}']}}]"
    )
    overrides = [*tiny_overrides(corpus, tmp_path, steps=1), f"eval.evaluators={spec}"]
    assert cli.main(["train", run_file(tmp_path), *overrides]) == 2
    err = capsys.readouterr().err
    assert "eval.evaluators[0] (zeroshot): templates: 'a {} {foo}' has a field {foo}" in err
    assert not (tmp_path / "metrics.jsonl").exists()
