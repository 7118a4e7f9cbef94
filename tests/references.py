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
