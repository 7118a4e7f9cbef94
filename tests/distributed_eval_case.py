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


def distributed_bank_rows(model, tokenizer, cfg) -> list[int]:
    """Every rank's rows of the kNN evaluator's training bank (its share only)."""
    from vlcontrast import distributed
    from vlcontrast.embed import Embedder
    from vlcontrast.eval.probes import embed_train_test

    spec = next(spec for spec in cfg.eval.evaluators if spec.kind == "knn")
    embedder = Embedder.from_model(model, tokenizer, cfg)
    data = embed_train_test(embedder, spec, split_train=True)
    return distributed.all_gather_objects(len(data["train"]["img_emb"]))


def worker(rank: int, world: int, init_file: str, cfg_path: str, weights: str, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model, tokenizer, cfg = build(cfg_path, weights)
        results = scalars_and_embeddings(run_evaluators(model, tokenizer, cfg))
        results["knn_bank_rows"] = distributed_bank_rows(model, tokenizer, cfg)
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
    """Each rank scores its share of the test rows (``probes.shared_knn_scores``) and fits
    its share of the linear probe's penalties (``probes.shared_sweep``); rank 0 saves what
    every rank ends with."""
    from vlcontrast.eval.knn import shared_bank_knn_scores
    from vlcontrast.eval.probes import shared_knn_scores, shared_sweep

    torch.set_num_threads(1)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        train, test = knn_inputs()
        scores = shared_knn_scores(train, test, 4, 5, 0.1, "cpu")
        curve = shared_sweep(train["img_emb"], train["labels"], 4, PENALTIES, 0.2)
        bank, asked = bank_share(rank, world), query_share(rank, world)
        sharded = shared_bank_knn_scores(
            train["img_emb"][bank], train["labels"][bank], test[asked], 4, 5, 0.1, "cpu", block=2
        )
        nothing = shared_bank_knn_scores(
            train["img_emb"][:0], train["labels"][:0], test[asked], 4, 5, 0.1, "cpu"
        )  # an empty bank on every rank: no votes, as knn_scores in one process
        assert torch.equal(nothing, torch.zeros(len(test[asked]), 4))
        gathered = [None] * world
        dist.all_gather_object(gathered, (scores, curve, sharded))
        if rank == 0:
            torch.save(gathered, out)
        dist.barrier()
    finally:
        dist.destroy_process_group()
