"""Weighted k-nearest-neighbour classification on frozen embeddings.

The protocol of Wu et al. 2018 (instance discrimination) used by DINO and solo-learn: the k
training embeddings most cosine-similar to a test embedding vote for their labels with weight
exp(similarity / T); defaults k=200, T=0.1. Test embeddings are scored in blocks of at most
1024 and at most ``SIM_BUDGET`` similarities, so memory stays at about 256 MB whatever the bank
(1.28M ImageNet images, or 2M patches of 10,000 images for dense kNN: a block of 1024 would be
5 to 8 GB).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from vlcontrast import distributed

SIM_BUDGET = 1 << 26  # similarities a block: 256 MB of float32


def knn_scores(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    block: int = 0,
) -> torch.Tensor:
    """(N_test, C) summed vote weights per class; inputs are unit-norm embeddings. ``block``:
    test embeddings a step (0: 1024, fewer for a bank so large that ``SIM_BUDGET`` binds)."""
    k = min(k, train_x.shape[0])
    block = block or max(1, min(1024, SIM_BUDGET // max(1, train_x.shape[0])))
    scores = []
    for start in range(0, test_x.shape[0], block):
        sim = test_x[start : start + block] @ train_x.T  # (b, N_train)
        top_sim, top_idx = sim.topk(k, dim=1)  # (b, k)
        scores.append(votes(top_sim, train_y[top_idx], num_classes, temperature))  # (b, C)
    return torch.cat(scores) if scores else torch.zeros(0, num_classes)


def votes(top_sim, top_labels, num_classes: int, temperature: float) -> torch.Tensor:
    """(b, C): each class's summed weight exp(sim / T) over the (b, k) neighbours."""
    weights = (top_sim / temperature).exp()  # a padding's -inf weighs 0
    out = torch.zeros(len(top_sim), num_classes, dtype=weights.dtype)
    return out.scatter_add_(1, top_labels, weights)


def shared_bank_knn_scores(
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    queries: torch.Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    device: torch.device | str = "cpu",
    block: int = 0,
) -> torch.Tensor:
    """:func:`knn_scores` of this rank's ``queries`` when every rank holds only its share of
    the bank (``bank``, ``bank_labels``), so no rank holds the whole of it. Each rank's queries
    go to every rank a block at a time; every rank answers with the ``k`` most similar rows of
    its share (similarity and label) and the owner keeps the ``k`` best of all the answers,
    which are the ``k`` best of the whole bank, then votes as :func:`knn_scores`. Traffic is
    the queries plus k (similarity, label) pairs a query from each rank; a rank's memory is its
    share of the bank and one block's similarities. One process: :func:`knn_scores`."""
    if distributed.world_size() == 1:
        return knn_scores(bank, bank_labels, queries, num_classes, k, temperature, block)
    me, world = distributed.rank(), distributed.world_size()
    counts = distributed.all_gather_objects((len(queries), len(bank)))
    k = min(k, sum(rows for _, rows in counts))
    if not k:  # an empty bank everywhere: no votes, as knn_scores gives
        return torch.zeros(len(queries), num_classes)
    block = block or max(1, min(1024, SIM_BUDGET // max(1, max(rows for _, rows in counts))))
    mine = []
    for owner, (asked, _) in enumerate(counts):
        for start in range(0, asked, block):
            rows = min(block, asked - start)
            piece = queries[start : start + rows] if me == owner else None
            if piece is None:
                piece = torch.empty(rows, queries.shape[1], dtype=queries.dtype)
            piece = piece.to(device).contiguous()
            dist.broadcast(piece, owner)
            top_sim, top_lab = _local_top(piece.cpu(), bank, bank_labels, k)
            sims = [torch.empty_like(top_sim, device=device) for _ in range(world)]
            labs = [torch.empty_like(top_lab, device=device) for _ in range(world)]
            dist.all_gather(sims, top_sim.to(device))
            dist.all_gather(labs, top_lab.to(device))
            if me != owner:
                continue
            sim, lab = torch.cat(sims, dim=1).cpu(), torch.cat(labs, dim=1).cpu()  # (b, W·k)
            best_sim, best = sim.topk(k, dim=1)
            mine.append(votes(best_sim, lab.gather(1, best), num_classes, temperature))
    return torch.cat(mine) if mine else torch.zeros(0, num_classes)


def _local_top(queries, bank, bank_labels, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` best similarities of ``queries`` in this rank's ``bank`` and their labels,
    (b, k) each, padded with -inf (label 0) where the share holds fewer than ``k`` rows."""
    top_sim = torch.full((len(queries), k), float("-inf"), dtype=queries.dtype)
    top_lab = torch.zeros(len(queries), k, dtype=torch.long)
    have = min(k, len(bank))
    if have:
        sim, idx = (queries @ bank.T).topk(have, dim=1)
        top_sim[:, :have], top_lab[:, :have] = sim, bank_labels[idx]
    return top_sim, top_lab
