"""Evaluation through the real entry points: evaluators declared in a run config, and
'vlcontrast eval zeroshot|retrieval|linear-probe|knn' on a checkpoint."""

import json
from pathlib import Path

import pytest

from tests.conftest import run_file, tiny_overrides
from vlcontrast import cli
from vlcontrast import config as config_lib
from vlcontrast.train import checkpoint
from vlcontrast.train.metrics_log import read_jsonl

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    """A 2-step run that evaluates zero-shot and kNN after every step."""
    out = tmp_path_factory.mktemp("run")
    evaluators = (
        f"eval.evaluators=[{{kind: zeroshot, data: '{corpus['heldout_shards']}'}}, "
        f"{{kind: knn, name: knn20, data: '{corpus['heldout_shards']}', "
        f"train_data: '{corpus['train_shards']}', k: 20}}]"
    )
    overrides = [*tiny_overrides(corpus, out, steps=2), evaluators, "eval.every=1"]
    assert cli.main(["train", run_file(out), *overrides]) == 0
    return out


def test_declared_evaluators_run_during_training_and_are_logged(trained):
    rows = [r for r in read_jsonl(trained / "metrics.jsonl") if "eval/zeroshot/top1" in r]
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        assert 0 <= row["eval/zeroshot/top1"] <= row["eval/zeroshot/top5"] <= 1
        assert row["eval/zeroshot/n"] == 64 and "eval/knn20/mean_per_class_recall" in row
    full = json.loads((trained / "eval" / "step_00000002.json").read_text())
    assert set(full) == {"zeroshot", "knn20"}
    assert len(full["zeroshot"]["confusion"]) == 30 and full["zeroshot"]["per_class"]


def ckpt(run_dir) -> str:
    return str(checkpoint.latest(run_dir / "checkpoints"))


def test_eval_retrieval_prints_a_table_and_writes_json(trained, corpus, tmp_path, capsys):
    report = tmp_path / "retrieval.json"
    args = ["eval", "retrieval", "--checkpoint", ckpt(trained), "--data", corpus["train_shards"]]
    assert cli.main([*args, "--max-samples", "100", "--workers", "0", "--json", str(report)]) == 0
    metrics = json.loads(report.read_text())["retrieval"]["metrics"]
    assert metrics["images"] == 100 and metrics["captions"] == 100
    for direction in ("image_to_text", "text_to_image"):
        assert 0 <= metrics[f"{direction}/R@1"] <= metrics[f"{direction}/R@10"] <= 1
    assert "text_to_image/R@5" in capsys.readouterr().out


@pytest.mark.parametrize("kind", ["knn", "linear-probe"])
def test_eval_probes_fit_on_train_data_and_score_data(kind, trained, corpus, tmp_path, capsys):
    report = tmp_path / f"{kind}.json"
    args = ["eval", kind, "--checkpoint", ckpt(trained), "--data", corpus["heldout_shards"]]
    args += ["--train-data", corpus["train_shards"], "--workers", "0", "--json", str(report)]
    assert cli.main(args) == 0
    result = json.loads(report.read_text())[kind.replace("-", "_")]
    assert result["metrics"]["n"] == 64 and 0 <= result["metrics"]["top1"] <= 1
    assert (tmp_path / f"{kind}.confusion.png").is_file()
    if kind == "linear-probe":
        assert result["metrics"]["weight_decay"] in [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1]
        assert len(result["val_accuracy"]) == 6


@pytest.mark.parametrize("gallery", [False, True])
def test_eval_class_retrieval_scores_a_set_against_itself_or_a_gallery(
    trained, corpus, tmp_path, gallery
):
    report = tmp_path / "class.json"
    args = ["eval", "class-retrieval", "--checkpoint", ckpt(trained), "--data"]
    args += [corpus["heldout_shards"], "--workers", "0", "--json", str(report)]
    if gallery:
        args += ["--gallery", corpus["train_shards"], "--recall-at", "1", "5"]
    assert cli.main(args) == 0
    metrics = json.loads(report.read_text())["class_retrieval"]["metrics"]
    ks = (1, 5) if gallery else (1, 2, 4, 8)
    recalls = [metrics[f"recall@{k}"] for k in ks]
    assert recalls == sorted(recalls) and 0 <= recalls[0] <= 1
    assert 0 <= metrics["map_at_r"] <= metrics["r_precision"] <= 1
    assert metrics["queries"] + metrics["queries_without_match"] == 64


def test_eval_errors_name_what_to_fix(trained, corpus, capsys):
    args = ["eval", "zeroshot", "--checkpoint", ckpt(trained), "--data", corpus["train_shards"]]
    assert cli.main(args) == 2  # no classes.json beside the training shards
    err = capsys.readouterr().err
    assert "eval.evaluators[0] (zeroshot): classes:" in err and "classes file" in err
    assert cli.main(["eval", "zeroshot", "--checkpoint", "/nowhere", "--data", "x"]) == 2
    assert "--checkpoint: /nowhere does not exist" in capsys.readouterr().err
    args = ["eval", "zeroshot", "--checkpoint", str(corpus["tokenizer"]), "--data", "x"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "is not a checkpoint" in err and "it holds: tokenizer.json" in err, err
    with pytest.raises(SystemExit):  # argparse: --train-data is required for knn
        cli.main(["eval", "knn", "--checkpoint", ckpt(trained), "--data", "x"])


def test_a_run_folder_or_latest_names_its_newest_checkpoint(trained, corpus, tmp_path, capsys):
    """eval takes the run folder, its checkpoints/ or RUN/latest as well as a step_* directory;
    k over the labelled bank is clamped with a note."""
    from vlcontrast.models.load import resolve_checkpoint

    newest = checkpoint.latest(trained / "checkpoints")
    for given in (trained, trained / "checkpoints", trained / "latest", newest):
        assert resolve_checkpoint(given) == newest
    report = tmp_path / "knn.json"
    args = ["eval", "knn", "--checkpoint", str(trained), "--data", corpus["heldout_shards"]]
    args += ["--train-data", corpus["heldout_shards"], "--workers", "0", "--json", str(report)]
    assert cli.main(args) == 0  # the default k=200 over 64 labelled images
    assert "k=200 is more than the 64 labelled images; using k=64" in capsys.readouterr().out
    assert json.loads(report.read_text())["knn"]["metrics"]["k"] == 64


def test_evaluator_keys_are_checked_and_names_must_be_unique(corpus, tmp_path, capsys):
    bad = "eval.evaluators=[{kind: zeroshot, data: x.tar, k: -1}]"
    assert cli.main(["train", run_file(tmp_path), *tiny_overrides(corpus, tmp_path), bad]) == 2
    assert "eval.evaluators[0].k: expected a number >= 0, got -1" in capsys.readouterr().err
    twice = "eval.evaluators=[{kind: knn, data: a}, {kind: knn, data: b}]"
    assert cli.main(["train", run_file(tmp_path), *tiny_overrides(corpus, tmp_path), twice]) == 2
    assert "eval.evaluators[1].name: 'knn' is used twice" in capsys.readouterr().err
    unknown = "eval.evaluators=[{kind: zeroshot, shards: x.tar}]"
    assert cli.main(["config", str(ROOT / "configs" / "demo.yaml"), unknown]) == 2
    assert "unknown config key 'eval.evaluators[0].shards'" in capsys.readouterr().err


def test_configs_saved_before_evaluators_still_load():
    old = {"eval": {"zeroshot_shards": "held/{0..1}.tar", "templates": ["a {}"], "every": 5}}
    cfg = config_lib.from_dict(old)
    (zeroshot,) = cfg.eval.evaluators
    assert (zeroshot.kind, zeroshot.data, zeroshot.templates) == (
        "zeroshot",
        "held/{0..1}.tar",
        ["a {}"],
    )
    assert cfg.eval.every == 5
    assert config_lib.from_dict({"eval": {"zeroshot_shards": ""}}).eval.evaluators == []


def test_train_prints_the_runs_own_evaluator_as_the_next_command():
    """After training, the next command is the run's first evaluator with its sets (shell-quoted
    patterns), not a generic kNN line; without evaluators, the model kind's usual one."""
    from vlcontrast import config as config_lib
    from vlcontrast.cli.run import next_commands

    dense = "eval.evaluators=[{kind: dense_knn, data: 'h/{00000..00001}.tar', train_data: t.tar}]"
    lines = next_commands("RUN", config_lib.load(None, ["model.kind=image", dense])).splitlines()
    assert lines[1] == (
        "  vlcontrast eval dense-knn --checkpoint RUN --train-data t.tar "
        "--data 'h/{00000..00001}.tar'"
    )
    plain = next_commands("RUN", config_lib.load(None, ["model.kind=image"])).splitlines()
    assert plain[1] == "  vlcontrast eval knn --checkpoint RUN --train-data TRAIN --data HELDOUT"


def test_an_evaluator_the_model_cannot_run_is_one_message_naming_what_it_can(
    corpus, tmp_path, capsys
):
    """Zero-shot on an image-only model (an SSL run, an imported backbone) needs a text tower:
    a training run is refused before it writes anything, and ``vlcontrast eval`` says which
    kinds the checkpoint can run instead of a traceback."""
    out = tmp_path / "run"
    zeroshot = f"eval.evaluators=[{{kind: zeroshot, data: '{corpus['heldout_shards']}'}}]"
    image_only = ["model.kind=image", "objective.name=simclr", "views.preset=small"]
    args = ["train", run_file(tmp_path), *tiny_overrides(corpus, out), *image_only, zeroshot]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "eval.evaluators[0].kind: zeroshot (zeroshot) needs a text tower" in err
    assert "model.kind=image" in err and "it can run: linear_probe, knn" in err
    assert not out.exists()
    byol = ROOT / "tests" / "data" / "format2" / "byol"  # an image-only checkpoint
    for kind in ("zeroshot", "retrieval", "sts"):
        assert cli.main(["eval", kind, "--checkpoint", str(byol), "--data", "x.tar"]) == 2
        err = capsys.readouterr().err
        assert f"vlcontrast eval {kind}: needs a text tower" in err, err
        assert "it can run: linear-probe, knn, class-retrieval, dense-knn" in err


def test_the_towers_each_kind_needs():
    from vlcontrast.eval.runner import EVALUATORS, missing_tower

    def model(kind):
        return config_lib.load(None, [f"model.kind={kind}"])

    assert all(missing_tower(model("dual"), kind) is None for kind in EVALUATORS)
    assert missing_tower(model("text"), "knn") == ("image", ["sts"])
    assert missing_tower(model("text"), "zeroshot")[0] == "image"
    assert missing_tower(model("image"), "sts")[0] == "text"
    assert missing_tower(model("image"), "dense_knn") is None
