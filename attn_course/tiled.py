r"""Tiled attention with an online softmax (the algorithm of FlashAttention, Dao et al. 2022).

Dense attention builds the scores ``(L, S)`` before normalising them: memory
grows with ``L * S``. But a softmax-weighted sum can be accumulated one tile of
keys at a time, if the partial results are corrected whenever a larger score
turns up. For one query row, with scores ``s_j`` (already scaled) and values
``v_j``, keep three running quantities over the keys seen so far:

    m = max_j s_j                      the running maximum
    l = sum_j exp(s_j - m)             the running normaliser
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

Only one tile of scores ``(rows, block_size)`` exists at a time, so the extra
memory is ``O(rows * block_size)`` per worker instead of ``O(L * S)``, while
the arithmetic is the same as dense attention plus the cheap rescaling of ``a``
and ``l``. Tiles come in three kinds (``_mask_tiles``): tiles no pair of which
is allowed are skipped (causal attention skips the tiles above the diagonal:
about half of them), tiles entirely allowed are computed without a mask, and
only the rest evaluate the mask (sliced from an array, or a predicate
``mask_fn(i, j)`` evaluated on the tile's indices).

On NumPy arrays a faster path comes first: the running maximum exists only to
keep ``exp`` from overflowing, so each tile is accumulated as plain
``sum exp(s_j)`` and ``sum exp(s_j) v_j`` (one pass less, no rescaling), and
every row's sum is checked at the end; a row that overflowed, underflowed or
saw nothing is computed again with the three running quantities above. With
scaled dot-product scores of ordinary size, no row needs it.

Queries are tiled too (about ``2**17 / block_size`` rows, so that one step
works on 512 KiB of scores), and on NumPy the query tiles of every head run in
parallel threads; CuPy and torch arrays take the same steps with their own
array functions. With ``is_causal`` the tile that crosses the diagonal is cut
at the last key the tile's queries can see.
"""

from __future__ import annotations

import math

import array_api_compat
import numpy as np

from ._mask_tiles import NOTHING_ALLOWED, PARTIAL, SKIP, ElementMask, tile_plan
from ._numpy_attention import PARALLEL_MIN_PAIRS, rows_to_redo
from ._parallel import num_threads, parallel_for, row_block_jobs
from .attention import check_qkv
from .masks import causal
from .validation import check_bool, check_int, check_scale, compute_dtype, shape_of

__all__ = ["tiled_attention"]

SCORES_PER_TILE = 1 << 17  # query rows x keys per step (512 KiB of float32): cache-sized, and big enough
#                            that Python's few microseconds per NumPy call do not show


def query_tile_rows(block_size: int, L: int, jobs_wanted: int) -> int:
    """Rows of a query tile: a multiple of ``block_size`` near ``SCORES_PER_TILE / block_size``.

    Fewer rows when that leaves fewer than ``jobs_wanted`` tiles to share among
    the threads; never fewer than ``block_size``.
    """
    rows = SCORES_PER_TILE // block_size
    rows = min(rows, math.ceil(L / max(1, jobs_wanted)))
    return block_size * max(1, rows // block_size)


def tiled_attention(q, k, v, mask=None, *, is_causal=False, block_size=128, scale=None):
    """``softmax(q k^T * scale) v`` computed one tile of keys at a time (online softmax).

    q: (..., L, d), k: (..., S, d), v: (..., S, dv); leading dimensions broadcast.
    mask: None, a boolean array broadcastable to (..., L, S), or a predicate
        ``mask_fn(i, j)`` (``attn_course.masks``); True = may attend.
    is_causal: also forbid keys ``j > i`` (top-left aligned); tiles above the diagonal are skipped.
    block_size: keys per tile (any L and S: the last tile may be shorter).
    scale: multiplies the scores; default ``1 / sqrt(d)``.
    Returns out (..., L, dv), the same as ``scaled_dot_product_attention`` up to
    rounding, without ever building an (L, S) array. A query that may attend
    to nothing gets a zero row. dtype is kept; float16 is computed in float32.
    """
    q, k, v, xp, batch = check_qkv(q, k, v)
    L, d = shape_of(q)[-2:]
    S, dv = shape_of(v)[-2:]
    is_causal = check_bool("is_causal", is_causal)
    block_size = check_int("block_size", block_size, minimum=1)
    scale = check_scale(scale, d)
    device = array_api_compat.device(q)
    element_mask = None if mask is None else ElementMask(mask, batch, L, S, xp, device)
    causal_mask = ElementMask(causal(), batch, L, S, xp, device) if is_causal else None  # tiles cached by offset

    query_tile = query_tile_rows(block_size, L, math.ceil(4 * num_threads() / math.prod(batch)))
    plan = tile_plan(L, S, query_tile, block_size, is_causal, element_mask)  # (query tiles, key tiles)
    dtype, work = q.dtype, compute_dtype(q.dtype, xp)
    q, k, v = (xp.astype(x, work, copy=False) for x in (q, k, v))  # no copy when already `work`

    def tile_mask(batch_index, rows: slice, cols: slice):
        """The mask of one PARTIAL tile, None when all of it turns out allowed, or NOTHING_ALLOWED."""
        allowed = None if element_mask is None else element_mask.tile(batch_index, rows, cols)
        if is_causal and cols.stop - 1 > rows.start:  # the tile crosses the diagonal
            below = causal_mask.tile(batch_index, rows, cols)
            allowed = below if allowed is None else allowed & below
        if allowed is not None and batch_index is not None:  # NumPy: cheap checks on one (R, C) tile
            if not allowed.any():
                return NOTHING_ALLOWED
            if allowed.all():
                return None
        return allowed

    if array_api_compat.is_numpy_array(q):
        varies = element_mask is not None and element_mask.varies_with_batch
        out = _tiled_numpy(q, k, v, batch, plan, query_tile, block_size, scale, is_causal, tile_mask, varies)
    else:
        pieces = []
        for row_tile in range(plan.shape[0]):
            rows = slice(row_tile * query_tile, min(L, (row_tile + 1) * query_tile))
            q_rows = q[..., rows, :] * scale  # (..., R, d)
            key_stop = min(S, rows.stop) if is_causal else S
            tiles = _key_tiles(
                plan[row_tile], block_size, key_stop, lambda cols, rows=rows: tile_mask(None, rows, cols)
            )
            pieces.append(_online_softmax(q_rows, k, v, tiles, xp, (*batch, rows.stop - rows.start, dv)))
        out = xp.concat(pieces, axis=-2)  # (..., L, dv)
    return xp.astype(out, dtype, copy=False)


def _key_tiles(plan_row, block_size: int, key_stop: int, tile_mask):
    """``(cols, allowed)`` for the key tiles of one row of the plan that are not skipped.

    ``allowed`` is None for a FULL tile; a PARTIAL tile's mask is computed
    only when the loop reaches it. Keys from ``key_stop`` on are cut off: with
    ``is_causal``, the query rows below ``key_stop`` never see them, so the
    tile that crosses the diagonal is computed only up to it.
    """
    for col_tile in range(plan_row.shape[0]):
        state = plan_row[col_tile]
        if state == SKIP or col_tile * block_size >= key_stop:
            continue
        cols = slice(col_tile * block_size, min(key_stop, (col_tile + 1) * block_size))
        allowed = tile_mask(cols) if state == PARTIAL else None
        if allowed is NOTHING_ALLOWED:
            continue
        yield cols, allowed


def _online_softmax(q_rows, k, v, tiles, xp, out_shape, out=None):
    """The online-softmax loop over key tiles for one block of query rows.

    q_rows: (..., R, d), already scaled; k: (..., S, d); v: (..., S, dv);
    tiles: ``(cols, allowed)`` pairs, ``allowed`` None or boolean (..., R, C).
    Returns (..., R, dv) (written into ``out`` when given, NumPy).
    """
    in_place = array_api_compat.is_numpy_namespace(xp)
    minus_inf = xp.asarray(-math.inf, dtype=q_rows.dtype)
    running_max = running_sum = acc = None
    for cols, allowed in tiles:
        scores = q_rows @ xp.matrix_transpose(k[..., cols, :])  # (..., R, C)
        if allowed is not None:
            if in_place:
                np.copyto(scores, minus_inf, where=~allowed)
            else:
                scores = xp.where(allowed, scores, minus_inf)
        tile_max = xp.max(scores, axis=-1, keepdims=True)  # (..., R, 1)
        new_max = tile_max if running_max is None else xp.maximum(running_max, tile_max)
        # rows with nothing allowed so far have max -inf: shift them by 0 so that exp(-inf) = 0, not NaN
        shift = xp.where(new_max == -math.inf, xp.zeros_like(new_max), new_max)
        if in_place:
            np.subtract(scores, shift, out=scores)
            np.exp(scores, out=scores)
        else:
            scores = xp.exp(scores - shift)  # exp(s_t - m') for the tile
        tile_sum = xp.sum(scores, axis=-1, keepdims=True)  # (..., R, 1)
        tile_out = scores @ v[..., cols, :]  # (..., R, dv)
        if acc is None:
            running_sum, acc = tile_sum, tile_out
        else:
            alpha = xp.exp(running_max - shift)  # exp(m - m'): rescales what came before
            running_sum = running_sum * alpha + tile_sum
            acc *= alpha
            acc += tile_out
        running_max = new_max
    if acc is None:  # every key tile skipped: nothing may be attended
        result = xp.zeros(out_shape, dtype=q_rows.dtype, device=array_api_compat.device(q_rows))
    else:
        result = acc / xp.where(running_sum > 0, running_sum, xp.ones_like(running_sum))
    if out is None:
        return result
    out[...] = result
    return out


def _accumulate_unshifted(q_rows, k, v, tiles, out) -> np.ndarray:
    """NumPy fast path: ``out = sum_j exp(s_j) v_j / sum_j exp(s_j)`` without the running maximum.

    The maximum only keeps the exponentials from overflowing (see the module
    docstring); without it there is nothing to rescale, and each tile costs one
    pass less. Returns the rows (indices) whose sum overflowed, underflowed
    towards zero or was empty, or whose output is not finite: the caller
    computes those again with the stable online softmax. q_rows: (R, d), scaled;
    k: (S, d); v: (S, dv); out: (R, dv), written.
    """
    total = tile_out = None
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        for cols, allowed in tiles:
            scores = q_rows @ k[cols].T  # (R, C)
            if allowed is not None:
                np.copyto(scores, -np.inf, where=~allowed)
            np.exp(scores, out=scores)
            if total is None:
                total = np.sum(scores, axis=1)  # (R,)
                np.matmul(scores, v[cols], out=out)
                tile_out = np.empty_like(out)  # (R, dv), reused by the next tiles
            else:
                total += np.sum(scores, axis=1)
                np.matmul(scores, v[cols], out=tile_out)
                out += tile_out
        if total is None:  # every key tile skipped: nothing may be attended
            out[...] = 0
            return np.empty(0, dtype=np.intp)
        out /= total[:, None]
    return rows_to_redo(total, out)


def _tiled_numpy(q, k, v, batch, plan, query_tile: int, block_size: int, scale, is_causal, tile_mask, varies):
    """NumPy: jobs of (query tile, some batch elements), spread over threads."""
    L, d = q.shape[-2:]
    S, dv = v.shape[-2:]
    queries = np.broadcast_to(q, (*batch, L, d))  # views: nothing is copied
    keys = np.broadcast_to(k, (*batch, S, d))
    values = np.broadcast_to(v, (*batch, S, dv))
    out = np.empty((*batch, L, dv), dtype=q.dtype)
    xp = array_api_compat.array_namespace(q)
    scale = np.asarray(scale, dtype=q.dtype)

    def job(item):
        row_tile, batch_indices = item
        rows = slice(row_tile * query_tile, min(L, (row_tile + 1) * query_tile))
        key_stop = min(S, rows.stop) if is_causal else S  # causal rows i < rows.stop see keys j <= i only
        shared_masks = {}  # key tile -> its mask, reused by every batch element when the mask is the same for all

        for index in batch_indices:

            def mask_of(cols, index=index):
                if varies:  # the mask differs between batch elements: no sharing
                    return tile_mask(index, rows, cols)
                if cols.start not in shared_masks:
                    shared_masks[cols.start] = tile_mask(index, rows, cols)
                return shared_masks[cols.start]

            target = out[index][rows]  # (R, dv)
            q_rows = queries[index][rows] * scale  # (R, d)
            tiles = _key_tiles(plan[row_tile], block_size, key_stop, mask_of)
            unsafe = _accumulate_unshifted(q_rows, keys[index], values[index], tiles, target)
            if unsafe.size:  # those rows again, the stable way (the masks are cached: same tiles)
                tiles = _key_tiles(plan[row_tile], block_size, key_stop, mask_of)
                tiles = ((cols, None if allowed is None else allowed[unsafe]) for cols, allowed in tiles)
                target[unsafe] = _online_softmax(
                    q_rows[unsafe], keys[index], values[index], tiles, xp, (unsafe.size, dv)
                )

    parallel_for(
        job,
        row_block_jobs(np.count_nonzero(plan, axis=1), batch),
        parallel=L * S * math.prod(batch) >= PARALLEL_MIN_PAIRS,
    )
    return out
