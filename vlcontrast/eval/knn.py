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
        weights = (top_sim / temperature).exp()  # (b, k)
        votes = torch.zeros(sim.shape[0], num_classes, dtype=weights.dtype)
        scores.append(votes.scatter_add_(1, train_y[top_idx], weights))  # (b, C)
    return torch.cat(scores) if scores else torch.zeros(0, num_classes)
