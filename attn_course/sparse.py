"""Block-sparse attention: compute only the tiles of the scores that a pattern allows.

Sparse patterns (sliding windows, Longformer, BigBird, the Sparse Transformer's
strided and fixed patterns) let each query attend to a few keys. Computing the
dense ``(L, S)`` scores and masking most of them away wastes nearly all the
work. Instead, cut the scores into ``block_size x block_size`` tiles and keep a
boolean **layout** ``(ceil(L / block_size), ceil(S / block_size))``: ``True``
where the tile holds a pair that may attend (``attn_course.layouts``). For the
block of query rows ``r``, gather the keys ``K_r`` of its marked tiles and run
one small dense softmax over them:

    out_i = sum_{j in K_r} w_ij v_j,    w_ij = exp(s_ij) [allowed(i, j)] / sum_{j' in K_r} exp(s_ij') [allowed(i, j')]

with ``s_ij = q_i . k_j * scale``. Keys outside ``K_r`` would only add
``exp(-inf) = 0`` to both sums, so this is exactly dense masked attention.
Time and memory grow with the number of marked tiles, not with ``L * S``: a
sliding window of ``w`` each side marks about ``2 w / block_size + 2`` tiles
per block row, ``O(L * w)`` instead of ``O(L^2)``.

An element mask (array, or predicate ``mask_fn(i, j)``) refines the tiles:
it is applied to the gathered keys. ``sparse_attention`` derives the layout
from the mask itself (``layouts.block_cover``), so it returns what dense masked
attention returns while touching only the marked tiles.

The functions below are the reference, on any array library. For NumPy arrays
one line hands the work to ``attn_course.fast.sparse`` (block rows on threads,
contiguous keys taken as views, the element mask evaluated only on tiles it
does not allow entirely, the softmax without the max subtraction unless a row
needs it); ``ATTN_COURSE_FAST=0`` or ``attn_course.fast.disabled()`` turns it off.
"""

from __future__ import annotations

import array_api_compat
import numpy as np

from . import fast
from .attention import attend
from .fast import sparse as fast_sparse
from .layouts import ElementMask, check_layout
from .validation import check_int, check_qkv, check_scale, compute_dtype, is_numpy, shape_of

__all__ = ["attend_marked_blocks", "block_sparse_attention", "sparse_attention"]


def block_sparse_attention(q, k, v, layout, block_size, mask=None, *, scale=None):
    """Attention computed only on the ``block_size x block_size`` tiles that ``layout`` marks.

    q: (..., L, d), k: (..., S, d), v: (..., S, dv); leading dimensions broadcast.
    layout: boolean (ceil(L / block_size), ceil(S / block_size)), one for every
        batch element and head; True = compute this tile. The last row and
        column of tiles may be partial (L and S need not be multiples of block_size).
    mask: optional element mask inside the marked tiles: a boolean array
        broadcastable to (..., L, S) or a predicate ``mask_fn(i, j)``.
    scale: multiplies the scores; default ``1 / sqrt(d)``.
    Returns out (..., L, dv): attention restricted to the pairs in marked tiles
    (and allowed by ``mask``); a query with no such pair gets a zero row.
    dtype is kept; float16 is computed in float32.
    """
    q, k, v, xp, batch = check_qkv(q, k, v)
    L, d = shape_of(q)[-2:]
    S = shape_of(k)[-2]
    block_size = check_int("block_size", block_size, minimum=1)
    layout = check_layout(layout, block_size, L, S)  # NumPy (query blocks, key blocks)
    scale = check_scale(scale, d)
    element_mask = None if mask is None else ElementMask(mask, batch, L, S, xp, array_api_compat.device(q))

    if fast.enabled() and is_numpy(q, k, v):  # threads; the mask only where a tile needs it; unshifted softmax
        return fast_sparse.block_sparse_attention(q, k, v, batch, layout, block_size, element_mask, scale)
    return attend_marked_blocks(q, k, v, batch, layout, block_size, element_mask, scale)


def sparse_attention(q, k, v, mask, block_size=64):
    """Masked attention that computes only the ``block_size`` tiles where ``mask`` allows a pair.

    q: (..., L, d), k: (..., S, d), v: (..., S, dv).
    mask: a boolean array broadcastable to (..., L, S) or a predicate
        ``mask_fn(i, j)`` from ``attn_course.masks`` (``sliding_window(256)``,
        ``longformer(...)``, ...); True = may attend.
    Returns what ``scaled_dot_product_attention(q, k, v, mask)`` returns (to
    rounding), with time and memory that grow with the allowed tiles. With a
    predicate no (L, S) array is ever built: a sliding window over
    L = 65,536 positions needs memory proportional to L * window.
    """
    q, k, v, xp, batch = check_qkv(q, k, v)
    L, d = shape_of(q)[-2:]
    S = shape_of(k)[-2]
    if mask is None:
        raise TypeError(
            "mask must be a boolean array (..., L, S) or a predicate mask_fn(i, j) such as "
            "masks.sliding_window(256); got None (without a mask use scaled_dot_product_attention)"
        )
    block_size = check_int("block_size", block_size, minimum=1)
    element_mask = ElementMask(mask, batch, L, S, xp, array_api_compat.device(q))
    cover = element_mask.cover(block_size)  # cover.some: the layout, the tiles holding an allowed pair
    scale = check_scale(None, d)

    if fast.enabled() and is_numpy(q, k, v):  # as above; tiles the mask allows entirely are not masked
        return fast_sparse.block_sparse_attention(q, k, v, batch, cover.some, block_size, element_mask, scale, cover)
    return attend_marked_blocks(q, k, v, batch, cover.some, block_size, element_mask, scale)


def attend_marked_blocks(q, k, v, batch, layout, block_size: int, element_mask, scale: float):
    """For each block of query rows: gather the keys of its marked tiles, one dense masked softmax over them.

    q: (..., L, d), k: (..., S, d), v: (..., S, dv), checked; layout: NumPy
    boolean (query blocks, key blocks); element_mask: None or a ``layouts.ElementMask``.
    Returns out (..., L, dv), dtype of q.
    """
    xp = array_api_compat.array_namespace(q)
    device = array_api_compat.device(q)
    L, S, dv = shape_of(q)[-2], shape_of(k)[-2], shape_of(v)[-1]
    dtype, work = q.dtype, compute_dtype(q.dtype, xp)  # float16 is computed in float32
    q, k, v = (xp.astype(x, work, copy=False) for x in (q, k, v))
    out = xp.zeros((*batch, L, dv), dtype=work, device=device)  # rows with no marked tile stay zero
    for row in range(layout.shape[0]):  # one block of query rows at a time
        rows = slice(row * block_size, min(L, (row + 1) * block_size))
        marked = np.flatnonzero(layout[row])  # the key blocks to compute
        if marked.size == 0:
            continue  # nothing to attend to
        keys = xp.concat([xp.arange(c * block_size, min(S, (c + 1) * block_size), device=device) for c in marked])
        k_marked = xp.take(k, keys, axis=k.ndim - 2)  # (..., K, d): the keys of the marked tiles
        v_marked = xp.take(v, keys, axis=v.ndim - 2)  # (..., K, dv)
        allowed = None if element_mask is None else element_mask.tile(None, rows, keys)  # (..., R, K)
        scores = (q[..., rows, :] * scale) @ xp.matrix_transpose(k_marked)  # (..., R, K)
        out_rows, _ = attend(scores, v_marked, allowed, xp)  # (..., R, dv)
        out[..., rows, :] = out_rows
    return xp.astype(out, dtype, copy=False)  # (..., L, dv)
