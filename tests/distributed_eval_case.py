"""Worker side of the distributed-evaluation test (spawned by test_eval_distributed.py): each gloo
process loads the same tiny model and runs the config's evaluators on its share of the data."""

from __future__ import annotations

import json
import os

import torch
import torch.distributed as dist

from vlcontrast import config as config_lib
from vlcontrast.eval.runner import run_evaluators
from vlcontrast.models import build_model
from vlcontrast.models.text_tower import load_tokenizer


def build(cfg_path: str, weights_path: str):
    cfg = config_lib.from_dict(json.loads(open(cfg_path).read()))
    model = build_model(cfg)
    model.load_state_dict(torch.load(weights_path))
    return model.eval(), load_tokenizer(cfg.text), cfg


def scalars_and_embeddings(results: dict) -> dict:
    out = {name: dict(result["metrics"]) for name, result in results.items()}
    out["zeroshot_img_emb"] = results["zeroshot"]["img_emb"]
    out["skipped"] = {name: result.get("skipped") for name, result in results.items()}
    return out


def count_training_rows() -> dict[str, int]:
    """From now on, the training rows each evaluator's ``embed_train_test`` leaves this rank
    with, by evaluator kind (filled as the evaluators run)."""
    from vlcontrast.eval import probes

    held, embed = {}, probes.embed_train_test

    def counted(embedder, spec, split_train=False):
        data = embed(embedder, spec, split_train)
        held[spec.kind] = len(data["train"]["img_emb"])
        return data

    probes.embed_train_test = counted
    return held


def worker(rank: int, world: int, init_file: str, cfg_path: str, weights: str, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model, tokenizer, cfg = build(cfg_path, weights)
        held = count_training_rows()
        results = scalars_and_embeddings(run_evaluators(model, tokenizer, cfg))
        results["training_rows"] = [None] * world
        dist.all_gather_object(results["training_rows"], held)
        gathered = [None] * world
        dist.all_gather_object(gathered, results["zeroshot"])
        results["ranks_agree"] = all(g == results["zeroshot"] for g in gathered)
        if rank == 0:
            torch.save(results, out)
        dist.barrier()  # no rank tears gloo down while another still talks
    finally:
        dist.destroy_process_group()


def knn_inputs():
    """A bank of 50 unit-norm embeddings in 4 classes and 11 test embeddings (seeded): 11 rows
    split unevenly over 2 or 3 ranks."""
    g = torch.Generator().manual_seed(0)
    bank = torch.nn.functional.normalize(torch.randn(50, 6, generator=g), dim=1)
    test = torch.nn.functional.normalize(torch.randn(11, 6, generator=g), dim=1)
    return {"img_emb": bank, "labels": torch.randint(0, 4, (50,), generator=g)}, test


PENALTIES = [1e-4, 1e-3, 1e-2, 1e-1, 1.0]  # 5: uneven shares over 2 or 3 ranks


def bank_share(rank: int, world: int) -> slice:
    """Rank ``rank``'s rows of the 50-row bank for the sharded search: the first rank holds 3
    (fewer than k=5), the middle one of 3 ranks none, the last the other 47."""
    cuts = [0, 3, 50] if world == 2 else [0, 3, 3, 50]
    return slice(cuts[rank], cuts[rank + 1])


def query_share(rank: int, world: int) -> slice:
    """Rank ``rank``'s test rows for the sharded search: 4 and 7 of the 11 (2 ranks); none, 4
    and 7 (3 ranks)."""
    cuts = [0, 4, 11] if world == 2 else [0, 0, 4, 11]
    return slice(cuts[rank], cuts[rank + 1])


def knn_worker(rank: int, world: int, init_file: str, out: str) -> None:
    """Each rank scores its share of the test rows (``probes.shared_knn_scores``) and holds
    its share of the linear probe's training rows (the bank's uneven shares, read in reverse
    order), fitted with every rank's (``linear_probe``'s ``shared``); rank 0 saves what every
    rank ends with."""
    from vlcontrast.eval.knn import shared_bank_knn_scores
    from vlcontrast.eval.linear_probe import refit_best, sweep_curve
    from vlcontrast.eval.probes import shared_knn_scores

    torch.set_num_threads(1)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        train, test = knn_inputs()
        scores = shared_knn_scores(train, test, 4, 5, 0.1, "cpu")
        bank, asked = bank_share(rank, world), query_share(rank, world)
        rows = torch.arange(50)[bank].flip(0)  # this rank's probe rows, not in dataset order
        x, y = train["img_emb"][rows], train["labels"][rows]
        curve = sweep_curve(x, y, 4, PENALTIES, 0.2, positions=rows, shared=True)
        probe = refit_best(x, y, test, 4, curve, shared=True)
        sharded = shared_bank_knn_scores(
            train["img_emb"][bank], train["labels"][bank], test[asked], 4, 5, 0.1, "cpu", block=2
        )
        nothing = shared_bank_knn_scores(
            train["img_emb"][:0], train["labels"][:0], test[asked], 4, 5, 0.1, "cpu"
        )  # an empty bank on every rank: no votes, as knn_scores in one process
        assert torch.equal(nothing, torch.zeros(len(test[asked]), 4))
        gathered = [None] * world
        dist.all_gather_object(gathered, (scores, curve, sharded, probe))
        if rank == 0:
            torch.save(gathered, out)
        dist.barrier()
    finally:
        dist.destroy_process_group()
