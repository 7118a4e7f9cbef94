"""Metric-learning losses on labelled embeddings, exact across ranks: margin contrastive, triplet,
N-pair, logistic (sigmoid) on pair similarity and multi-similarity.

Every loss sees the global batch the way ``losses/supcon.py`` does: this rank's rows are the
anchors, scored against the embeddings of all ranks (``all_gather_with_grad``; labels gathered
without grad), with the self-pair at column ``start + i`` left out. A loss that is a mean over
global pairs, triplets or anchors divides this rank's sum by the global count (all-reduced) and
multiplies by the world size, so that DDP's gradient average is the gradient of the one global
loss, also when ranks hold different numbers of rows.

Conventions, stated once: ``distance`` is ``euclidean`` (||a - b||) or ``cosine`` (1 - cos a·b);
a positive pair has one label, a negative pair two; mined triplets and pairs come from
``losses/miners.py`` as indices into (local anchor rows, gathered columns).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vlcontrast import distributed as dist_lib

DISTANCES = ("euclidean", "cosine")


@dataclass
class Gathered:
    """This rank's anchors against the global batch."""

    emb: torch.Tensor  # (M, D) this rank's rows
    emb_all: torch.Tensor  # (M_all, D) every rank's, with grad
    labels: torch.Tensor  # (M,)
    labels_all: torch.Tensor  # (M_all,)
    is_self: torch.Tensor  # (M, M_all) bool: column start + i is row i

    @property
    def positive(self) -> torch.Tensor:  # (M, M_all): same label, not itself
        return (self.labels[:, None] == self.labels_all[None, :]) & ~self.is_self

    @property
    def negative(self) -> torch.Tensor:  # (M, M_all): another label
        return self.labels[:, None] != self.labels_all[None, :]


def gather(emb: torch.Tensor, labels: torch.Tensor) -> Gathered:
    rows = emb.shape[0]
    sizes = dist_lib.batch_sizes(rows, emb.device)
    start = sum(sizes[: dist_lib.rank()])
    emb_all = dist_lib.all_gather_with_grad(emb, sizes)
    labels_all = dist_lib.all_gather_no_grad(labels, sizes)
    own = torch.arange(rows, device=emb.device)
    is_self = torch.zeros(rows, emb_all.shape[0], dtype=torch.bool, device=emb.device)
    is_self[own, start + own] = True
    return Gathered(emb, emb_all, labels, labels_all, is_self)


def distances(a: torch.Tensor, b: torch.Tensor, distance: str = "euclidean") -> torch.Tensor:
    """(M, N) distances between the rows of ``a`` (M, D) and ``b`` (N, D). The Euclidean one is
    computed from the difference (not the Gram expansion) so a pair at distance 0 has a finite
    gradient: sqrt is clamped at 1e-12 squared."""
    if distance == "cosine":
        return 1 - F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T
    if distance != "euclidean":
        raise ValueError(f"distance: expected one of {DISTANCES}, got {distance!r}")
    squared = (a[:, None, :] - b[None, :, :]).pow(2).sum(-1)  # (M, N)
    return squared.clamp(min=1e-24).sqrt()


def row_distances(x: torch.Tensor, y: torch.Tensor, distance: str = "euclidean") -> torch.Tensor:
    """(T,) distances between matching rows of ``x`` and ``y`` (T, D): one per mined triplet,
    without the (T, T) matrix."""
    if distance == "cosine":
        return 1 - (F.normalize(x, dim=-1) * F.normalize(y, dim=-1)).sum(-1)
    if distance != "euclidean":
        raise ValueError(f"distance: expected one of {DISTANCES}, got {distance!r}")
    return (x - y).pow(2).sum(-1).clamp(min=1e-24).sqrt()


def global_mean(total: torch.Tensor, count: torch.Tensor | int, what: str) -> torch.Tensor:
    """This rank's share of a mean over the global batch: ``total`` (this rank's sum) divided by
    the count over all ranks, times the world size (DDP averages the gradients)."""
    device = total.device
    counted = dist_lib.all_reduce(torch.as_tensor(count, dtype=total.dtype, device=device).clone())
    if counted == 0:
        raise ValueError(f"{what}: nothing to average over in the global batch")
    return total * (dist_lib.world_size() / counted)


def contrastive_loss(
    emb: torch.Tensor,
    labels: torch.Tensor,
    pos_margin: float = 0.0,
    neg_margin: float = 1.0,
    distance: str = "euclidean",
    power: int = 2,
) -> torch.Tensor:
    """Margin contrastive loss (Hadsell, Chopra & LeCun 2006), with pytorch-metric-learning's
    two margins: positive pairs pay ``relu(d - pos_margin)^power``, negative pairs
    ``relu(neg_margin - d)^power`` (power 2: Hadsell's squared hinge; 1: the plain hinge). The
    loss is the mean over positive pairs plus the mean over negative pairs of the global batch,
    so the N^2 negatives do not drown the N positives. Defaults: margins 0 and 1 (pytorch-metric-
    learning's ``ContrastiveLoss`` for unit-norm embeddings), power 2 (Hadsell et al.)."""
    g = gather(emb, labels)
    d = distances(g.emb, g.emb_all, distance)  # (M, M_all)
    pos, neg = g.positive, g.negative
    pos_terms = F.relu(d - pos_margin).pow(power).masked_fill(~pos, 0.0).sum()
    neg_terms = F.relu(neg_margin - d).pow(power).masked_fill(~neg, 0.0).sum()
    return global_mean(pos_terms, pos.sum(), "contrastive_loss (positive pairs)") + global_mean(
        neg_terms, neg.sum(), "contrastive_loss (negative pairs)"
    )


def triplet_loss(
    emb: torch.Tensor,
    labels: torch.Tensor,
    triplets: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    margin: float = 0.2,
    distance: str = "euclidean",
    swap: bool = False,
    soft: bool = False,
) -> torch.Tensor:
    """Triplet margin loss (Weinberger & Saul 2009; FaceNet, Schroff et al. 2015): the mean
    over triplets (anchor a, positive p, negative n) of ``relu(d(a, p) - d(a, n) + margin)``;
    ``soft``: ``softplus(d(a, p) - d(a, n))`` without a margin (Hermans et al. 2017); ``swap``:
    the negative's distance is the smaller of d(a, n) and d(p, n) (Balntas et al. 2016).
    ``triplets`` index (this rank's anchor rows, gathered columns, gathered columns), from a
    miner (``losses/miners.py``); None: every valid triplet. Margin 0.2: FaceNet's (with
    unit-norm embeddings; pytorch-metric-learning's loss default is 0.05, its miner's 0.2,
    its issue 466: here one margin serves both)."""
    g = gather(emb, labels)
    if triplets is None:
        from vlcontrast.losses.miners import all_triplets

        triplets = all_triplets(g.positive, g.negative)
    a, p, n = triplets
    # index_select, not emb[idx]: the backward of advanced indexing accumulates with parallel
    # atomic adds on CPU (index_put_), so two identical runs differed in the last bit
    emb_a, emb_p, emb_n = (
        x.index_select(0, i) for x, i in ((g.emb, a), (g.emb_all, p), (g.emb_all, n))
    )
    d_ap = row_distances(emb_a, emb_p, distance)  # (T,)
    d_an = row_distances(emb_a, emb_n, distance)
    if swap:
        d_an = torch.minimum(d_an, row_distances(emb_p, emb_n, distance))
    terms = F.softplus(d_ap - d_an) if soft else F.relu(d_ap - d_an + margin)
    # + 0 * emb: a rank that mined no triplet still takes part in DDP's gradient reduction
    return global_mean(terms.sum() + 0 * emb.sum(), len(a), "triplet_loss (triplets)")


def npair_loss(anchor: torch.Tensor, positive: torch.Tensor, l2_reg: float = 0.02) -> torch.Tensor:
    """Multi-class N-pair loss (Sohn 2016): N (anchor, positive) pairs of N classes; each anchor
    classifies its own positive among the N positives of the global batch by inner product
    (softmax cross-entropy), plus ``l2_reg`` times the mean squared norm of the (unnormalised)
    embeddings (Sohn's regulariser, 0.02 in his experiments; ``anchor``/``positive`` (B, D))."""
    rows = anchor.shape[0]
    sizes = dist_lib.batch_sizes(rows, anchor.device)
    start = sum(sizes[: dist_lib.rank()])
    positive_all = dist_lib.all_gather_with_grad(positive, sizes)  # (N, D)
    logits = anchor @ positive_all.T  # (B, N)
    target = torch.arange(start, start + rows, device=anchor.device)
    ce = F.cross_entropy(logits, target, reduction="sum")
    norms = anchor.pow(2).sum(1) + positive.pow(2).sum(1)  # (B,)
    return global_mean(ce + l2_reg * norms.sum() / 2, rows, "npair_loss (pairs)")


def logistic_loss(
    emb: torch.Tensor, labels: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """Logistic (binary cross-entropy) loss on pair similarity: every pair of the global batch
    (self-pairs left out) is a binary example, same label or not, with logit
    ``scale * cos + bias`` (learnable, as SigLIP's; the logistic loss of the design names pair
    similarity through a sigmoid); the mean over pairs."""
    g = gather(F.normalize(emb, dim=-1), labels)
    logits = scale * (g.emb @ g.emb_all.T) + bias  # (M, M_all)
    target = g.positive.to(logits.dtype)
    terms = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    terms = terms.masked_fill(g.is_self, 0.0)
    return global_mean(terms.sum(), (~g.is_self).sum(), "logistic_loss (pairs)")


def multi_similarity_loss(
    emb: torch.Tensor,
    labels: torch.Tensor,
    pairs: tuple[torch.Tensor, torch.Tensor] | None = None,
    alpha: float = 2.0,
    beta: float = 50.0,
    base: float = 0.5,
) -> torch.Tensor:
    """Multi-similarity loss (Wang et al. 2019, eq. 5) on cosine similarity S: per anchor
    ``1/alpha log(1 + sum_P exp(-alpha (S - base))) + 1/beta log(1 + sum_N exp(beta (S -
    base)))``, the mean over anchors with a positive. ``pairs`` (a (M, M_all) bool mask of the
    pairs kept, from ``miners.multi_similarity_pairs``; None: all). alpha 2, beta 50, base 0.5:
    the paper's."""
    g = gather(F.normalize(emb, dim=-1), labels)
    sim = g.emb @ g.emb_all.T  # (M, M_all)
    keep = pairs if pairs is not None else torch.ones_like(g.is_self)
    pos, neg = g.positive & keep, g.negative & keep
    zero = torch.zeros(len(sim), 1, dtype=sim.dtype, device=sim.device)  # the "1 +" as e^0
    pos_logits = (-alpha * (sim - base)).masked_fill(~pos, float("-inf"))
    neg_logits = (beta * (sim - base)).masked_fill(~neg, float("-inf"))
    pos_term = torch.logsumexp(torch.cat([zero, pos_logits], 1), 1) / alpha  # (M,)
    neg_term = torch.logsumexp(torch.cat([zero, neg_logits], 1), 1) / beta
    anchors = g.positive.any(1)
    total = (pos_term + neg_term)[anchors].sum()
    return global_mean(total, anchors.sum(), "multi_similarity_loss (anchors with a positive)")
