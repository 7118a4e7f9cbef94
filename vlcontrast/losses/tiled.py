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

The loss returned is ``weight * (sum_i row_lse_i + sum_{own columns j} col_lse_j - 2 sum_i pos_i)``
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


def _lse_stats(img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor, tile: int):
    """Row and (partial) column log-sum-exp statistics of ``logit_scale * img @ txt.T``, tile by
    tile, and the row-wise dot products with the columns from ``offset`` (the positives)."""
    rows, cols = img.shape[0], txt.shape[0]
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
            _online_update(tile_logits, tile_buf, row_max[a : a + tile], row_sum[a : a + tile], 1)
            _online_update(tile_logits, tile_buf, col_max[b : b + tile], col_sum[b : b + tile], 0)
    return row_max, row_sum, col_max, col_sum


def _positive_logits(img, txt, logit_scale, offset: int, tile: int) -> torch.Tensor:
    """``logit_scale * <img_i, txt_{offset+i}>`` for every row, a tile of rows at a time."""
    rows = img.shape[0]
    parts = [
        (img[a : a + tile] * txt[offset + a : offset + min(a + tile, rows)]).sum(1)
        for a in range(0, rows, tile)
    ]
    return torch.cat(parts) * logit_scale  # (B,)


def _reduce_columns(col_max: torch.Tensor, col_sum: torch.Tensor) -> None:
    """Combine every rank's partial column statistics in place (max first, then rescaled sums)."""
    global_max = dist_lib.all_reduce(col_max.clone(), op=torch.distributed.ReduceOp.MAX)
    col_sum.mul_(torch.exp(col_max - global_max))
    dist_lib.all_reduce(col_sum)
    col_max.copy_(global_max)


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
        row_max, row_sum, col_max, col_sum = _lse_stats(img, txt, logit_scale, tile)
        if reduce_columns:
            _reduce_columns(col_max, col_sum)
        row_lse = row_max + row_sum.log()  # (B,)
        col_lse = col_max + col_sum.log()  # (N,)
        pos = _positive_logits(img, txt, logit_scale, offset, tile)  # (B,)
        loss = weight * (row_lse.sum() + col_lse[offset : offset + rows].sum() - 2 * pos.sum())
        ctx.save_for_backward(img, txt, logit_scale, row_lse, col_lse)
        ctx.offset, ctx.weight, ctx.tile = offset, weight, tile
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        with torch.autocast(grad_loss.device.type, enabled=False):
            return _TiledCLIP._backward(ctx, grad_loss)

    @staticmethod
    def _backward(ctx, grad_loss):
        img, txt, logit_scale, row_lse, col_lse = ctx.saved_tensors
        offset, weight, tile = ctx.offset, ctx.weight, ctx.tile
        rows, cols = img.shape[0], txt.shape[0]
        grad_img_s = torch.zeros_like(img)  # gradient with respect to logit_scale * img
        grad_txt = torch.zeros_like(txt)
        probs = img.new_empty((min(tile, rows), min(tile, cols)))
        buf = torch.empty_like(probs)
        for a in range(0, rows, tile):
            img_tile = img[a : a + tile] * logit_scale  # (ta, D)
            for b in range(0, cols, tile):
                txt_tile = txt[b : b + tile]
                tile_probs = probs[: img_tile.shape[0], : txt_tile.shape[0]]
                tile_buf = buf[: img_tile.shape[0], : txt_tile.shape[0]]
                torch.mm(img_tile, txt_tile.T, out=tile_buf)  # (ta, tb) logits, recomputed
                torch.sub(tile_buf, row_lse[a : a + tile, None], out=tile_probs).exp_()
                tile_buf.sub_(col_lse[None, b : b + tile]).exp_()
                tile_probs.add_(tile_buf)  # softmax over the row + softmax over the column
                grad_img_s[a : a + tile].addmm_(tile_probs, txt_tile)
                grad_txt[b : b + tile].addmm_(tile_probs.T, img_tile)
        # The positives' logits enter both directions with weight -1 each.
        grad_img_s.sub_(txt[offset : offset + rows], alpha=2.0)
        grad_txt[offset : offset + rows].sub_(img, alpha=2.0 * float(logit_scale))
        scale = grad_loss * weight
        grad_img_s.mul_(scale)
        grad_txt.mul_(scale)
        grad_logit_scale = torch.dot(grad_img_s.view(-1), img.reshape(-1)).reshape(
            logit_scale.shape
        )
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
