"""DenseCL's dense contrastive term (Wang et al. 2021), as pure functions.

Each location of the query view's feature map is matched to the location of the key view's map
whose *backbone* feature is most similar (cosine argmax: ``dense_correspondence``); the query's
dense projection at that location is then contrasted, MoCo-style, with the matched key's dense
projection as its positive and a second queue of pooled dense keys as negatives
(``dense_loss``). DenseCL's loss is ``(1 - lambda) * global + lambda * dense``; the global term is
MoCo v2's (``losses/ssl.py:moco_queue_loss``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlcontrast.losses.ssl import moco_queue_loss


@torch.no_grad()
def dense_correspondence(q_feat: torch.Tensor, k_feat: torch.Tensor) -> torch.Tensor:
    """For each of the N query locations (``q_feat`` (B, N, F) backbone features), the index of
    the key location (``k_feat`` (B, M, F)) with the highest cosine similarity: (B, N)."""
    sim = F.normalize(q_feat.float(), dim=-1) @ F.normalize(k_feat.float(), dim=-1).transpose(1, 2)
    return sim.argmax(dim=2)  # (B, N, M) -> (B, N)


def matched_keys(k_grid: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``k_grid`` (B, M, D) gathered at ``index`` (B, N): the matched key of each query
    location, (B, N, D)."""
    return torch.gather(k_grid, 1, index.unsqueeze(-1).expand(-1, -1, k_grid.shape[-1]))


def dense_loss(
    q_grid: torch.Tensor, k_matched: torch.Tensor, queue: torch.Tensor, temperature: float
) -> torch.Tensor:
    """InfoNCE of every query location: ``q_grid`` (B, N, D) against its matched key
    ``k_matched`` (B, N, D, no grad) and the ``queue`` (K, D) of pooled dense keys, all unit
    norm; the mean over the B·N locations."""
    q = q_grid.reshape(-1, q_grid.shape[-1])  # (B·N, D)
    k = k_matched.detach().reshape(-1, k_matched.shape[-1])
    return moco_queue_loss(q, k, queue, temperature)
