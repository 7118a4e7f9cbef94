"""Exact symmetric InfoNCE in O(B·D + tile²) memory: a blockwise kernel with an online
log-sum-exp and a custom backward that recomputes each block.

The textbook CLIP loss materialises the (B, N) logit matrix, its two log-softmaxes and their
gradients: over 4 GiB at B = 16384, ~64 GiB at 65536. Here the matrix only ever exists one tile at
a time. The forward walks the tiles once and keeps, per row and per column, a running maximum and
a running sum of exponentials (the online softmax of Milakov & Gimelshein 2018, as in
FlashAttention). One similarity tile serves both directions: its row statistics give the
image->text log-normaliser and its column statistics the text->image one. The backward recomputes
each tile and forms its gradient ``softmax_row + softmax_col`` in place, so the cost is four
B x N x D matrix products (one forward, three backward) and the memory a few tiles.

Distributed (local rows against gathered columns): each rank passes only its own image rows and
the gathered text columns. The per-column statistics are partial sums over this rank's rows; one
all-reduce of two N-vectors completes them, so no rank ever holds another rank's rows or the full
matrix. The backward returns this rank's share of the text-column gradient, which the gather's
backward sums over ranks (see ``vlcontrast.distributed``).

The loss returned is ``weight * (sum_i (row_lse_i - pos_i) + sum_{own j} (col_lse_j - pos_j))``
where row ``i``'s positive is column ``offset + i``: with ``weight = 1 / (2B)`` in one process this
is the CLIP loss, and with ``weight = W / (2N)`` the per-rank losses sum to W times the global loss.
"""

from __future__ import annotations

import torch

from vlcontrast import distributed as dist_lib


def _online_update(
    logits: torch.Tensor, buf: torch.Tensor, run_max: torch.Tensor, run_sum: torch.Tensor, dim: int
) -> None:
    """Fold one tile into the running (max, sum of exp) of its rows (dim=1) or columns (dim=0)."""
    new_max = torch.maximum(run_max, logits.amax(dim))
    torch.sub(logits, new_max.unsqueeze(dim), out=buf).exp_()
    run_sum.mul_(torch.exp(run_max - new_max)).add_(buf.sum(dim))
    run_max.copy_(new_max)


def _positives_in_tile(a: int, b: int, ta: int, tb: int, offset: int, device):
    """(rows, columns) within a (ta, tb) tile at (a, b) of the positives (row i, col offset+i)."""
    own = torch.arange(a, a + ta, device=device)
    cols = own + offset - b
    hit = (cols >= 0) & (cols < tb)
    return own[hit] - a, cols[hit]


def _lse_stats(img, txt, logit_scale, tile: int, offset: int):
    """Row and (partial) column log-sum-exp statistics of ``logit_scale * img @ txt.T``, tile by
    tile, and the positives' logits (row ``i``, column ``offset + i``) read from the same tiles,
    so that ``max - positive`` is exact when they are equal."""
    rows, cols = img.shape[0], txt.shape[0]
    pos = img.new_zeros(rows)
    row_max = img.new_full((rows,), float("-inf"))
    row_sum = img.new_zeros(rows)
    col_max = img.new_full((cols,), float("-inf"))
    col_sum = img.new_zeros(cols)
    logits = img.new_empty((min(tile, rows), min(tile, cols)))
    buf = torch.empty_like(logits)
    for a in range(0, rows, tile):
        img_tile = img[a : a + tile] * logit_scale  # (ta, D): scaled rows scale every logit
        for b in range(0, cols, tile):
            txt_tile = txt[b : b + tile]
            tile_logits = logits[: img_tile.shape[0], : txt_tile.shape[0]]
            tile_buf = buf[: img_tile.shape[0], : txt_tile.shape[0]]
            torch.mm(img_tile, txt_tile.T, out=tile_logits)  # (ta, tb)
            r, c = _positives_in_tile(a, b, *tile_logits.shape, offset, img.device)
            pos[a + r] = tile_logits[r, c]
            _online_update(tile_logits, tile_buf, row_max[a : a + tile], row_sum[a : a + tile], 1)
            _online_update(tile_logits, tile_buf, col_max[b : b + tile], col_sum[b : b + tile], 0)
    return row_max, row_sum, col_max, col_sum, pos


def _reduce_columns(col_max: torch.Tensor, col_sum: torch.Tensor) -> None:
    """Combine every rank's partial column statistics in place (max first, then rescaled sums)."""
    global_max = dist_lib.all_reduce(col_max.clone(), op=torch.distributed.ReduceOp.MAX)
    col_sum.mul_(torch.exp(col_max - global_max))
    dist_lib.all_reduce(col_sum)
    col_max.copy_(global_max)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum(a * b) in one pass, without a temporary."""
    return torch.dot(a.reshape(-1), b.reshape(-1))


class _TiledCLIP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, img, txt, logit_scale, offset, weight, tile, reduce_columns):
        with torch.autocast(img.device.type, enabled=False):  # the kernel runs in its input dtype
            return _TiledCLIP._forward(
                ctx, img, txt, logit_scale, offset, weight, tile, reduce_columns
            )

    @staticmethod
    def _forward(ctx, img, txt, logit_scale, offset, weight, tile, reduce_columns):
        rows = img.shape[0]
        row_max, row_sum, col_max, col_sum, pos = _lse_stats(img, txt, logit_scale, tile, offset)
        if reduce_columns:
            _reduce_columns(col_max, col_sum)
        row_log, col_log = row_sum.log(), col_sum.log()  # lse = max + log(sum of exp)
        # Per-row and per-column terms first, each as (max - positive) + log(sum): the max and
        # the positive are nearby logits (their difference is exact in float32), while adding
        # lse terms (about the logit scale each) and subtracting the positives' sum would cancel
        # B x 100 against B x 100 (tests/test_tiled_loss.py checks large logit scales).
        own = slice(offset, offset + rows)
        row_terms = (row_max - pos) + row_log  # (B,)
        col_terms = (col_max[own] - pos) + col_log[own]  # (B,)
        loss = weight * (row_terms.sum() + col_terms.sum())
        # Every column's positive logit (gathered columns: each rank holds its own rows'), for
        # the accurate logit-scale gradient in the backward.
        col_pos = dist_lib.all_gather_no_grad(pos) if reduce_columns else pos
        saved = (img, txt, logit_scale, row_max, row_log, col_max, col_log, pos, col_pos)
        ctx.save_for_backward(*saved)
        ctx.offset, ctx.weight, ctx.tile = offset, weight, tile
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        with torch.autocast(grad_loss.device.type, enabled=False):
            return _TiledCLIP._backward(ctx, grad_loss)

    @staticmethod
    def _backward(ctx, grad_loss):
        img, txt, logit_scale, row_max, row_log, col_max, col_log, pos, col_pos = ctx.saved_tensors
        offset, weight, tile = ctx.offset, ctx.weight, ctx.tile
        rows, cols = img.shape[0], txt.shape[0]
        grad_img_s = torch.zeros_like(img)  # gradient with respect to logit_scale * img
        grad_txt = torch.zeros_like(txt)
        # d loss / d scale = sum_ij G_ij * logits_ij / scale with G = P_row + P_col - 2 I. As the
        # softmaxes sum to one, that is sum_ij P_row_ij (l_ij - l_ii) + P_col_ij (l_ij - l_jj):
        # differences of nearby logits, not a cancellation of sums of large ones (40x more
        # accurate in float32 near one-hot softmaxes at scale 100, issue: hardening).
        grad_scale = img.new_zeros(())
        row_lse, col_lse = row_max + row_log, col_max + col_log
        probs = img.new_empty((min(tile, rows), min(tile, cols)))
        buf = torch.empty_like(probs)
        logits = torch.empty_like(probs)
        for a in range(0, rows, tile):
            img_tile = img[a : a + tile] * logit_scale  # (ta, D)
            for b in range(0, cols, tile):
                txt_tile = txt[b : b + tile]
                ta, tb = img_tile.shape[0], txt_tile.shape[0]
                tile_probs, tile_buf, tile_logits = probs[:ta, :tb], buf[:ta, :tb], logits[:ta, :tb]
                torch.mm(img_tile, txt_tile.T, out=tile_logits)  # (ta, tb) logits, recomputed
                torch.sub(tile_logits, row_lse[a : a + tile, None], out=tile_probs).exp_()
                torch.sub(tile_logits, pos[a : a + tile, None], out=tile_buf)  # l_ij - l_ii
                grad_scale += _dot(tile_probs, tile_buf)
                torch.sub(tile_logits, col_lse[None, b : b + tile], out=tile_buf).exp_()
                tile_logits.sub_(col_pos[None, b : b + tile])  # l_ij - l_jj
                grad_scale += _dot(tile_buf, tile_logits)
                tile_probs.add_(tile_buf)  # softmax over the row + softmax over the column
                # The positives' logits enter both directions with weight -1 each; subtracting
                # them inside the tile (not from the summed gradient) keeps float32 accurate
                # when the softmaxes are close to one-hot.
                r, c = _positives_in_tile(a, b, ta, tb, offset, img.device)
                tile_probs[r, c] -= 2.0
                grad_img_s[a : a + tile].addmm_(tile_probs, txt_tile)
                grad_txt[b : b + tile].addmm_(tile_probs.T, img_tile)
        scale = grad_loss * weight
        grad_img_s.mul_(scale)
        grad_txt.mul_(scale)
        grad_logit_scale = (grad_scale * scale / logit_scale).reshape(logit_scale.shape)
        grad_img = grad_img_s.mul_(logit_scale)
        return grad_img, grad_txt, grad_logit_scale, None, None, None, None


def tiled_clip_loss(
    img_emb: torch.Tensor,
    txt_emb: torch.Tensor,
    logit_scale: torch.Tensor,
    *,
    offset: int = 0,
    weight: float | None = None,
    tile_size: int = 1024,
    reduce_columns: bool = False,
) -> torch.Tensor:
    """Blockwise symmetric InfoNCE of ``img_emb`` rows (B, D) against ``txt_emb`` columns (N, D).

    Row ``i``'s positive is column ``offset + i``. In one process (``offset=0``, N = B) this equals
    :func:`vlcontrast.losses.clip.clip_loss` in value and gradient. ``reduce_columns`` completes
    the column statistics across ranks (local rows against gathered columns).
    """
    if img_emb.shape[0] + offset > txt_emb.shape[0]:
        raise ValueError(f"rows {offset}..{offset + img_emb.shape[0]} exceed {txt_emb.shape[0]}")
    if tile_size <= 0:
        raise ValueError(f"tile_size must be positive, got {tile_size}")
    weight = weight if weight is not None else 1.0 / (2 * img_emb.shape[0])
    return _TiledCLIP.apply(
        img_emb.contiguous(),
        txt_emb.contiguous(),
        logit_scale,
        offset,
        weight,
        tile_size,
        reduce_columns,
    )
