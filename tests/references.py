"""Textbook loss implementations, written independently of the library (explicit loops over
anchors, straight from the papers), used as references by the loss and distributed tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def textbook_clip_loss(img, txt, scale):
    """Radford et al. 2021, figure 3, written with explicit log-softmax sums."""
    n = img.shape[0]
    logits = scale * img @ txt.T
    i2t = -sum(logits[i, i] - torch.logsumexp(logits[i, :], 0) for i in range(n)) / n
    t2i = -sum(logits[j, j] - torch.logsumexp(logits[:, j], 0) for j in range(n)) / n
    return (i2t + t2i) / 2


def textbook_siglip_loss(img, txt, scale, bias):
    """Zhai et al. 2023, algorithm 1: -1/|B| sum_i sum_j log sigmoid(z_ij (t x_i.y_j + b))."""
    n = img.shape[0]
    total = 0.0
    for i in range(n):
        for j in range(n):
            z = 1.0 if i == j else -1.0
            total = total - F.logsigmoid(z * (scale * img[i] @ txt[j] + bias))
    return total / n


def textbook_nt_xent(emb_a, emb_b, temperature):
    """Chen et al. 2020, algorithm 1: 2N anchors, positive = the other view, self excluded."""
    z = torch.cat([emb_a, emb_b])
    n2 = z.shape[0]
    n = n2 // 2
    total = 0.0
    for k in range(n2):
        pos = (k + n) % n2
        sims = torch.stack([z[k] @ z[m] / temperature for m in range(n2) if m != k])
        total = total - (z[k] @ z[pos] / temperature - torch.logsumexp(sims, 0))
    return total / n2


def textbook_supcon(emb, labels, temperature):
    """Khosla et al. 2020, eq. 2 (L_out), anchors without a positive left out."""
    m = emb.shape[0]
    losses = []
    for i in range(m):
        others = [a for a in range(m) if a != i]
        positives = [p for p in others if labels[p] == labels[i]]
        if not positives:
            continue
        log_norm = torch.logsumexp(torch.stack([emb[i] @ emb[a] / temperature for a in others]), 0)
        terms = [emb[i] @ emb[p] / temperature - log_norm for p in positives]
        losses.append(-sum(terms) / len(positives))
    return sum(losses) / len(losses)


def textbook_moco_queue(q, k, queue, temperature):
    """He et al. 2020, algorithm 1: logits [q.k+, q.queue] / T, the positive at index 0."""
    total = 0.0
    for i in range(len(q)):
        logits = torch.cat([(q[i] @ k[i]).reshape(1), queue @ q[i]]) / temperature
        total = total - torch.log_softmax(logits, 0)[0]
    return total / len(q)


def textbook_moco_v3(q_a, q_b, k_a, k_b, temperature):
    """Chen et al. 2021, algorithm 1: ctr(q1, k2) + ctr(q2, k1), ctr = CE(q k^T / T) * 2T."""

    def ctr(q, k):
        total = 0.0
        for i in range(len(q)):
            total = total - torch.log_softmax(k @ q[i] / temperature, 0)[i]
        return total / len(q) * 2 * temperature

    return ctr(q_a, k_b.detach()) + ctr(q_b, k_a.detach())


def textbook_barlow_twins(z_a, z_b, lambda_offdiag):
    """Zbontar et al. 2021, algorithm 1: batch-normalised (affine-free) projections, c = the
    (D, D) cross-correlation over the batch, on-diagonal (1 - c)^2 + lambda off-diagonal c^2."""
    n, d = z_a.shape
    bn = lambda z: torch.nn.functional.batch_norm(z, None, None, training=True, eps=1e-5)
    c = bn(z_a).T @ bn(z_b) / n
    loss = 0.0
    for i in range(d):
        for j in range(d):
            loss = loss + ((1 - c[i, j]) ** 2 if i == j else lambda_offdiag * c[i, j] ** 2)
    return loss


def textbook_byol(p_a, p_b, z_a, z_b):
    """Grill et al. 2020, eq. 2, symmetrised: ||p - z||^2 of unit vectors, both directions."""
    a = ((p_a - z_b.detach()) ** 2).sum(1).mean()
    b = ((p_b - z_a.detach()) ** 2).sum(1).mean()
    return a + b


# Metric learning: loops over pairs and triplets, written from the papers, not from the library.


def _distance(a, b, distance="euclidean"):
    if distance == "cosine":
        return 1 - (a @ b) / (a.norm() * b.norm())
    return ((a - b) ** 2).sum().sqrt()


def textbook_contrastive(emb, labels, pos_margin, neg_margin, power=2, distance="euclidean"):
    """Hadsell et al. 2006 with two margins: mean over positive pairs of relu(d - m_p)^power
    plus mean over negative pairs of relu(m_n - d)^power."""
    pos, neg = [], []
    for i in range(len(emb)):
        for j in range(len(emb)):
            if i == j:
                continue
            d = _distance(emb[i], emb[j], distance)
            if labels[i] == labels[j]:
                pos.append(torch.relu(d - pos_margin) ** power)
            else:
                neg.append(torch.relu(neg_margin - d) ** power)
    return sum(pos) / len(pos) + sum(neg) / len(neg)


def brute_force_triplets(emb, labels, kind="all", margin=0.2, distance="euclidean"):
    """FaceNet's definitions by enumeration: all, hard (d_an < d_ap), semi-hard (d_ap < d_an <
    d_ap + margin), and batch-hard (per anchor: farthest positive, closest negative)."""
    n = len(emb)
    d = [[float(_distance(emb[i], emb[j], distance)) for j in range(n)] for i in range(n)]
    out = []
    for a in range(n):
        positives = [p for p in range(n) if p != a and labels[p] == labels[a]]
        negatives = [x for x in range(n) if labels[x] != labels[a]]
        if kind == "batch_hard":
            if positives and negatives:
                p = max(positives, key=lambda j: d[a][j])
                x = min(negatives, key=lambda j: d[a][j])
                out.append((a, p, x))
            continue
        for p in positives:
            for x in negatives:
                if kind == "all":
                    out.append((a, p, x))
                elif kind == "hard" and d[a][x] < d[a][p]:
                    out.append((a, p, x))
                elif kind == "semi_hard" and d[a][p] < d[a][x] < d[a][p] + margin:
                    out.append((a, p, x))
    return out


def textbook_triplet(emb, triplets, margin=0.2, distance="euclidean", swap=False, soft=False):
    terms = []
    for a, p, x in triplets:
        d_ap = _distance(emb[a], emb[p], distance)
        d_an = _distance(emb[a], emb[x], distance)
        if swap:
            d_an = torch.minimum(d_an, _distance(emb[p], emb[x], distance))
        gap = d_ap - d_an
        terms.append(torch.nn.functional.softplus(gap) if soft else torch.relu(gap + margin))
    return sum(terms) / len(terms)


def textbook_npair(anchor, positive, l2_reg):
    """Sohn 2016: -log softmax over the N positives of the own one, plus l2_reg/2 (|a|^2 + |p|^2)
    averaged over pairs."""
    total = 0.0
    for i in range(len(anchor)):
        logits = positive @ anchor[i]
        total = total - (logits[i] - torch.logsumexp(logits, 0))
        total = total + l2_reg * (anchor[i] @ anchor[i] + positive[i] @ positive[i]) / 2
    return total / len(anchor)


def textbook_logistic(emb, labels, scale, bias):
    total, count = 0.0, 0
    unit = [e / e.norm() for e in emb]
    for i in range(len(emb)):
        for j in range(len(emb)):
            if i == j:
                continue
            p = torch.sigmoid(scale * (unit[i] @ unit[j]) + bias)
            total = total - (torch.log(p) if labels[i] == labels[j] else torch.log(1 - p))
            count += 1
    return total / count


def textbook_multi_similarity(emb, labels, alpha, beta, base, keep=None):
    """Wang et al. 2019, eq. 5 on cosine similarity; ``keep(i, j)`` says which pairs count."""
    unit = [e / e.norm() for e in emb]
    total, anchors = 0.0, 0
    for i in range(len(emb)):
        has_pos = any(labels[j] == labels[i] for j in range(len(emb)) if j != i)
        if not has_pos:
            continue
        pos_sum, neg_sum = 1.0, 1.0
        for j in range(len(emb)):
            if j == i or (keep is not None and not keep(i, j)):
                continue
            s = unit[i] @ unit[j]
            if labels[j] == labels[i]:
                pos_sum = pos_sum + torch.exp(-alpha * (s - base))
            else:
                neg_sum = neg_sum + torch.exp(beta * (s - base))
        total = total + torch.log(torch.as_tensor(pos_sum)) / alpha
        total = total + torch.log(torch.as_tensor(neg_sum)) / beta
        anchors += 1
    return total / anchors


def multi_similarity_keep(emb, labels, epsilon=0.1):
    """Wang et al. 2019, eq. 3-4 by enumeration: ``keep(i, j)`` for a negative above the
    anchor's hardest positive - epsilon, a positive below its hardest negative + epsilon."""
    unit = torch.nn.functional.normalize(emb.detach(), dim=-1)
    sim = unit @ unit.T
    n = len(labels)

    def keep(i, j):
        same = [k for k in range(n) if k != i and labels[k] == labels[i]]
        other = [k for k in range(n) if labels[k] != labels[i]]
        if labels[j] == labels[i]:
            return bool(sim[i, j] < max(sim[i, k] for k in other) + epsilon)
        return bool(sim[i, j] > min(sim[i, k] for k in same) - epsilon)

    return keep


def textbook_in_batch_negatives(anchor, positive, negative=None, temperature=0.05, symmetric=False):
    """sentence-transformers' MultipleNegativesRankingLoss / SimCSE, one anchor at a time: the
    anchor's positive against every positive and every hard negative of the batch."""
    n = anchor.shape[0]
    candidates = [positive[j] for j in range(n)]
    if negative is not None:
        candidates += [negative[j, k] for j in range(n) for k in range(negative.shape[1])]
    total = 0.0
    for i in range(n):
        scores = torch.stack([anchor[i] @ c for c in candidates]) / temperature
        forward = -(scores[i] - torch.logsumexp(scores, 0))
        if symmetric:
            back = torch.stack([positive[i] @ anchor[j] for j in range(n)]) / temperature
            forward = (forward - (back[i] - torch.logsumexp(back, 0))) / 2
        total = total + forward
    return total / n


def textbook_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean of -log softmax(row)[label] over the rows whose label is a class, row by row."""
    terms = []
    for row, label in zip(logits, labels.tolist(), strict=True):
        if 0 <= label < len(row):
            terms.append(torch.log(torch.exp(row).sum()) - row[label])
    return torch.stack(terms).mean()


def textbook_sinkhorn(scores: torch.Tensor, eps: float, iters: int) -> torch.Tensor:
    """Algorithm 1 of Caron et al. 2020 (appendix), one process, float64, no shift."""
    q = torch.exp(scores.double() / eps).T  # (K, B)
    q /= q.sum()
    k, b = q.shape
    for _ in range(iters):
        q /= q.sum(dim=1, keepdim=True)
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= b
    return (q * b).T


def textbook_swav(scores: list[torch.Tensor], codes: dict[int, torch.Tensor], t: float):
    total, pairs = 0.0, 0
    for i, q in codes.items():
        sub = 0.0
        for v in range(len(scores)):
            if v == i:
                continue
            for row in range(len(q)):
                p = torch.exp(scores[v][row] / t) / torch.exp(scores[v][row] / t).sum()
                sub = sub - (q[row] * torch.log(p)).sum() / len(q)
        total = total + sub / (len(scores) - 1)
        pairs += 1
    return total / pairs


def textbook_dino(student_out, teacher_out, center, student_temp, teacher_temp, n_crops):
    """DINO's ``DINOLoss.forward`` (main_dino.py): crop-major (C·B, K) student and (2·B, K)
    teacher outputs, chunked per crop; the mean over pairs of different crops."""
    student_out = student_out / student_temp
    student_out = student_out.chunk(n_crops)
    teacher_out = F.softmax((teacher_out - center) / teacher_temp, dim=-1).detach().chunk(2)
    total_loss, n_loss_terms = 0, 0
    for iq, q in enumerate(teacher_out):
        for v in range(len(student_out)):
            if v == iq:
                continue
            loss = torch.sum(-q * F.log_softmax(student_out[v], dim=-1), dim=-1)
            total_loss += loss.mean()
            n_loss_terms += 1
    return total_loss / n_loss_terms


def textbook_dino_center(center, teacher_out, momentum):
    """DINO's ``update_center`` on one process: (2·B, K) teacher outputs."""
    batch_center = torch.sum(teacher_out, dim=0, keepdim=True) / len(teacher_out)
    return center * momentum + batch_center.squeeze(0) * (1 - momentum)


def textbook_densecl(q, k, queue, q_grid, k_grid, q_b, k_b, queue2, t, lam):
    """DenseCL's ``forward_train`` (densecl.py) after the encoders: q, k (N, C) unit; q_grid,
    k_grid (N, C, S²) unit dense projections; q_b, k_b (N, F, S²) unit backbone features;
    queue, queue2 (C, K) as DenseCL stores them; returns (global, dense, total) losses."""

    def contrastive(pos, neg):  # ContrastiveHead: cross-entropy with the positive at 0
        logits = torch.cat((pos, neg), dim=1) / t
        labels = torch.zeros((logits.size(0),), dtype=torch.long)
        return F.cross_entropy(logits, labels)

    l_pos = torch.einsum("nc,nc->n", [q, k]).unsqueeze(-1)
    l_neg = torch.einsum("nc,ck->nk", [q, queue.clone().detach()])
    backbone_sim_matrix = torch.matmul(q_b.permute(0, 2, 1), k_b)
    densecl_sim_ind = backbone_sim_matrix.max(dim=2)[1]  # N x S^2
    indexed_k_grid = torch.gather(
        k_grid, 2, densecl_sim_ind.unsqueeze(1).expand(-1, k_grid.size(1), -1)
    )
    densecl_sim_q = (q_grid * indexed_k_grid).sum(1)
    l_pos_dense = densecl_sim_q.view(-1).unsqueeze(-1)
    q_grid = q_grid.permute(0, 2, 1)
    q_grid = q_grid.reshape(-1, q_grid.size(2))
    l_neg_dense = torch.einsum("nc,ck->nk", [q_grid, queue2.clone().detach()])
    single, dense = contrastive(l_pos, l_neg), contrastive(l_pos_dense, l_neg_dense)
    return single, dense, single * (1 - lam) + dense * lam
