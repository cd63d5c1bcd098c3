r"""Tiled attention with an online softmax (the algorithm of FlashAttention, Dao et al. 2022).

Dense attention builds the scores ``(L, S)`` before normalising them: memory
grows with ``L * S``. But a softmax-weighted sum can be accumulated one tile of
keys at a time, if the partial results are corrected whenever a larger score
turns up. For one query row, with scores ``s_j`` (already scaled) and values
``v_j``, keep three running quantities over the keys seen so far (lesson 13):

    m = max_j s_j                      the running maximum
    l = sum_j exp(s_j - m)             the running sum
    a = sum_j exp(s_j - m) v_j         the running (unnormalised) output

A new tile of keys ``T`` with scores ``s_t`` (t in T) updates them as

    m' = max(m, max_t s_t)
    l' = exp(m - m') * l + sum_t exp(s_t - m')
    a' = exp(m - m') * a + sum_t exp(s_t - m') v_t

because ``exp(s_j - m) * exp(m - m') = exp(s_j - m')``: multiplying by
``alpha = exp(m - m') <= 1`` re-expresses everything seen so far relative to
the new maximum. Every exponent stays <= 0, so nothing overflows, exactly as in
the stable softmax. After the last tile, ``out = a / l`` is the softmax-weighted
sum, equal to dense attention up to rounding. Starting from ``m = -inf``,
``l = 0``, ``a = 0`` makes the first tile an ordinary update (``alpha = 0``).

Only one tile of scores ``(block_size, block_size)`` exists at a time, so the
extra memory is ``O(block_size^2)`` per step instead of ``O(L * S)``. With
``is_causal`` the tiles above the diagonal hold no allowed pair and are not
computed at all (about half of them); the tiles that cross it are masked.

``tiled_attention`` below is the reference, on any array library. For NumPy
arrays one line hands the work to ``attn_course.fast.tiled``: query tiles of
many rows on parallel threads, a plan of which tiles to skip, compute whole or
mask, and the sums accumulated without the running maximum (rows that would
overflow are redone by ``online_softmax``); ``ATTN_COURSE_FAST=0`` or
``attn_course.fast.disabled()`` turns it off.

For training, ``return_lse=True`` also returns each row's log-sum-exp
``lse = m + log(l) = log sum_j exp(s_j)``: ``L`` numbers from which the
backward pass (``attn_course.backward``) recomputes any weight,
``p_j = exp(s_j - lse)``, instead of storing the ``(L, S)`` weights.
"""

from __future__ import annotations

import math

import array_api_compat

from . import fast
from .fast import tiled as fast_tiled
from .layouts import ElementMask
from .validation import check_bool, check_int, check_qkv, check_scale, compute_dtype, is_numpy, shape_of

__all__ = ["key_tiles", "online_softmax", "tile_mask", "tiled_attention"]


def tiled_attention(q, k, v, mask=None, *, is_causal=False, block_size=128, scale=None, return_lse=False):
    """``softmax(q k^T * scale) v`` computed one tile of keys at a time (online softmax).

    q: (..., L, d), k: (..., S, d), v: (..., S, dv); leading dimensions broadcast.
    mask: None, a boolean array broadcastable to (..., L, S), or a predicate
        ``mask_fn(i, j)`` (``attn_course.masks``); True = may attend.
    is_causal: also forbid keys ``j > i`` (top-left aligned); tiles above the diagonal are skipped.
    block_size: queries and keys per tile (any L and S: the last tile may be shorter).
    scale: multiplies the scores; default ``1 / sqrt(d)``.
    return_lse: also return ``lse (..., L)``, the log-sum-exp of each row's scaled,
        masked scores (``-inf`` for a row that may attend to nothing), in the dtype
        computed in (float32 for float16 inputs): what the backward pass needs.
    Returns out (..., L, dv), the same as ``scaled_dot_product_attention`` up to
    rounding, without ever building an (L, S) array, or ``(out, lse)``. A query
    that may attend to nothing gets a zero row. dtype is kept; float16 is computed in float32.
    """
    q, k, v, xp, batch = check_qkv(q, k, v)
    L, d = shape_of(q)[-2:]
    S, dv = shape_of(v)[-2:]
    is_causal = check_bool("is_causal", is_causal)
    block_size = check_int("block_size", block_size, minimum=1)
    scale = check_scale(scale, d)
    return_lse = check_bool("return_lse", return_lse)
    device = array_api_compat.device(q)
    element_mask = None if mask is None else ElementMask(mask, batch, L, S, xp, device)

    if fast.enabled() and is_numpy(q, k, v):  # same updates on threads; sums without the max, unsafe rows redone
        return fast_tiled.tiled_attention(
            q, k, v, element_mask, is_causal, block_size, scale, batch, online_softmax, return_lse
        )

    dtype, work = q.dtype, compute_dtype(q.dtype, xp)  # float16 is computed in float32
    q, k, v = (xp.astype(x, work, copy=False) for x in (q, k, v))
    out = xp.zeros((*batch, L, dv), dtype=work, device=device)
    lse = xp.zeros((*batch, L), dtype=work, device=device)
    for start in range(0, L, block_size):  # one tile of query rows at a time
        rows = slice(start, min(L, start + block_size))
        q_rows = q[..., rows, :] * scale  # (..., R, d)
        tiles = key_tiles(rows, S, block_size, is_causal, element_mask, xp, device)
        shape = (*batch, rows.stop - rows.start, dv)
        out[..., rows, :], lse[..., rows] = online_softmax(q_rows, k, v, tiles, xp, shape, return_lse=True)
    out = xp.astype(out, dtype, copy=False)  # (..., L, dv)
    return (out, lse) if return_lse else out


def key_tiles(rows: slice, S: int, block_size: int, is_causal: bool, element_mask, xp, device):
    """The key tiles that the query rows ``rows`` visit: ``(cols, allowed)``, ``allowed`` None where all may attend.

    With ``is_causal`` the loop stops at the first tile above the diagonal (its
    keys ``j > i`` for every row), and the tile that crosses the diagonal is masked.
    """
    for start in range(0, S, block_size):
        cols = slice(start, min(S, start + block_size))
        if is_causal and cols.start > rows.stop - 1:
            break  # this tile and the ones after it lie above the diagonal: nothing to compute
        yield cols, tile_mask(rows, cols, is_causal, element_mask, xp, device)


def tile_mask(rows: slice, cols: slice, is_causal: bool, element_mask, xp, device):
    """The mask of the tile (rows, cols): ``element_mask``'s, AND ``j <= i`` where the tile crosses the diagonal.

    None when every pair of the tile may attend. Shared by the forward's
    ``key_tiles`` and the backward's ``query_tiles`` (``attn_course.backward``).
    """
    allowed = None if element_mask is None else element_mask.tile(None, rows, cols)  # (..., R, C)
    if is_causal and cols.stop - 1 > rows.start:  # the tile crosses the diagonal
        i = xp.reshape(xp.arange(rows.start, rows.stop, device=device), (-1, 1))
        j = xp.reshape(xp.arange(cols.start, cols.stop, device=device), (1, -1))
        allowed = (j <= i) if allowed is None else allowed & (j <= i)
    return allowed


def online_softmax(q_rows, k, v, tiles, xp, out_shape, return_lse=False):
    """The online softmax of lesson 13 over the key tiles of one block of query rows.

    q_rows: (..., R, d), already scaled; k: (..., S, d); v: (..., S, dv);
    tiles: ``(cols, allowed)`` pairs, ``allowed`` None or boolean (..., R, C);
    out_shape: the shape of the result, (..., R, dv).
    Returns ``a / l``: (..., R, dv); a row that may attend to nothing gets zeros.
    With ``return_lse`` also ``m + log(l)`` (..., R), the log-sum-exp of each row's
    scores (``-inf`` for a row that may attend to nothing).
    """
    device = array_api_compat.device(q_rows)
    m = xp.full((*out_shape[:-1], 1), -math.inf, dtype=q_rows.dtype, device=device)  # (..., R, 1) running max
    l = xp.zeros_like(m)  # (..., R, 1) running sum
    a = xp.zeros(out_shape, dtype=q_rows.dtype, device=device)  # (..., R, dv) running output
    for cols, allowed in tiles:
        s = q_rows @ xp.matrix_transpose(k[..., cols, :])  # (..., R, C): one tile of scores
        if allowed is not None:
            s = xp.where(allowed, s, xp.asarray(-math.inf, dtype=s.dtype, device=device))
        m_new = xp.maximum(m, xp.max(s, axis=-1, keepdims=True))  # (..., R, 1)
        # a row with nothing allowed so far keeps m = -inf: shift it by 0, so that exp(-inf) = 0, not NaN
        shift = xp.where(m_new == -math.inf, xp.zeros_like(m_new), m_new)
        alpha = xp.exp(m - shift)  # (..., R, 1): rescales what came before; 0 at the first tile
        p = xp.exp(s - shift)  # (..., R, C)
        l = alpha * l + xp.sum(p, axis=-1, keepdims=True)
        a = alpha * a + p @ v[..., cols, :]  # (..., R, dv)
        m = m_new
    out = a / xp.where(l > 0, l, xp.ones_like(l))  # rows that may attend to nothing: 0 / 1 = 0
    if not return_lse:
        return out
    lse = xp.where(l > 0, m + xp.log(xp.where(l > 0, l, xp.ones_like(l))), m)  # m = -inf where l = 0
    return out, lse[..., 0]  # (..., R, dv), (..., R)
