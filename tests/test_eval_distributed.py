"""Distributed evaluation: 2 gloo processes, each embedding its share, give the numbers of one
process, for every evaluator kind, with an uneven split (one held-out shard for two ranks)."""

import json

import pytest
import torch

from tests import distributed_eval_case as case
from tests.conftest import spawn_gloo, tiny_overrides
from vlcontrast import config as config_lib
from vlcontrast.embed import Embedder
from vlcontrast.eval.probes import embed_train_test
from vlcontrast.eval.runner import run_evaluators
from vlcontrast.models import build_model


def eval_config(corpus, tmp_path):
    cfg = config_lib.load(None, tiny_overrides(corpus, tmp_path))
    heldout, train = corpus["heldout_shards"], corpus["train_shards"]
    cfg.eval.batch_size = 24
    config_lib.apply(
        cfg,
        {
            "eval": {
                "evaluators": [
                    {"kind": "zeroshot", "data": heldout, "templates": ["generic"]},
                    {"kind": "retrieval", "data": train, "max_samples": 150},
                    {"kind": "knn", "data": heldout, "train_data": train, "k": 20},
                    {
                        "kind": "linear_probe",
                        "data": heldout,
                        "train_data": train,
                        "weight_decays": [1e-3, 1e-1],
                    },
                ]
            }
        },
    )
    return cfg


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_split_the_knn_search_and_the_probes_training_set_and_all_end_with_the_whole(
    tmp_path, world
):
    """Every rank scores every world-th test embedding against the whole bank; every rank
    ends with all the scores in order, equal to one process's. The linear probe's training
    rows split unevenly over the ranks (one rank with 3, one with none under 3 ranks, each
    share out of dataset order): every rank ends with one process's validation curve and test
    logits, the same on every rank. With the bank itself split over the ranks (dense kNN's
    ``shared_bank_knn_scores``), each rank's queries get the whole bank's scores."""
    from vlcontrast.eval.knn import knn_scores
    from vlcontrast.eval.linear_probe import refit_best, sweep_curve

    train, test = case.knn_inputs()
    want = knn_scores(train["img_emb"], train["labels"], test, 4, 5, 0.1)
    want_curve = sweep_curve(train["img_emb"], train["labels"], 4, case.PENALTIES, 0.2)
    want_probe = refit_best(train["img_emb"], train["labels"], test, 4, want_curve)
    assert len(set(want_curve.values())) > 1  # the penalties are told apart
    spawn_gloo(case.knn_worker, world, tmp_path, str(tmp_path / "scores.pt"))
    everyone = torch.load(tmp_path / "scores.pt")
    for scores, curve, _, probe in everyone:
        assert torch.equal(scores, want)
        assert curve == want_curve
        assert probe["weight_decay"] == want_probe["weight_decay"]
        assert torch.equal(probe["logits"], everyone[0][3]["logits"])  # the same on every rank
        torch.testing.assert_close(probe["logits"], want_probe["logits"], rtol=1e-4, atol=1e-4)
    # the bank split over the ranks (one share under k, one empty), each rank's own queries
    # (one rank with none) searched in blocks of 2: the whole bank's scores
    sharded = torch.cat([part for _, _, part, _ in everyone])
    assert [len(part) for _, _, part, _ in everyone] == [
        len(range(11)[case.query_share(r, world)]) for r in range(world)
    ]
    torch.testing.assert_close(sharded, want, rtol=1e-6, atol=1e-6)
    assert torch.equal(sharded.argmax(dim=1), want.argmax(dim=1))


@pytest.mark.slow  # multi-process end to end: the README's command runs it
def test_two_ranks_give_the_single_process_numbers(corpus, tmp_path):
    cfg = eval_config(corpus, tmp_path)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    cfg_path, weights = tmp_path / "config.json", tmp_path / "weights.pt"
    config_lib.save(cfg, cfg_path)
    torch.save(model.state_dict(), weights)
    model, tokenizer, cfg = case.build(str(cfg_path), str(weights))
    want = case.scalars_and_embeddings(run_evaluators(model, tokenizer, cfg))

    out = tmp_path / "results.pt"
    spawn_gloo(case.worker, 2, tmp_path, str(cfg_path), str(weights), str(out))
    got = torch.load(out)

    assert got["ranks_agree"], "ranks ended with different metrics"
    assert got["skipped"] == want["skipped"]
    torch.testing.assert_close(got["zeroshot_img_emb"], want["zeroshot_img_emb"])
    # The untrained model scores duplicate captions (the corpus repeats them) equally up to
    # float noise, which differs with the text batch each rank embeds: one caption's rank may
    # flip by one place between equal scores, moving a retrieval mean by 1/150 at most.
    tie = {"retrieval": 1.01 / 150}
    for name in ("zeroshot", "retrieval", "knn", "linear_probe"):
        assert set(got[name]) == set(want[name])
        for key, value in want[name].items():
            tol = tie.get(name, 1e-6)
            assert got[name][key] == pytest.approx(value, abs=tol), f"{name}/{key}"
    assert want["retrieval"]["images"] == 150 and want["zeroshot"]["n"] == 64
    # the kNN bank and the probe's training set stayed split: each rank held its share of
    # the training images, no more
    knn = cfg.eval.evaluators[2]
    whole = len(
        embed_train_test(Embedder.from_model(model, tokenizer, cfg), knn)["train"]["img_emb"]
    )
    for kind in ("knn", "linear_probe"):
        rows = [held[kind] for held in got["training_rows"]]
        assert sum(rows) == whole and max(rows) < whole, kind
    json.dumps(want["knn"])  # plain numbers, loggable
