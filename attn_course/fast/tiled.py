"""Tiled attention on NumPy arrays, laid out for a CPU (the fast path of ``tiled_attention``).

The same online softmax as the reference in ``attn_course/tiled.py``, arranged
for speed:

* **Large query tiles on threads.** A query tile holds about
  ``2**17 / block_size`` rows (one step works on 512 KiB of scores); the query
  tiles of every head are independent jobs spread over the cores.
* **A tile plan** (``layouts.tile_plan``): tiles no pair of which is allowed
  are skipped (causal attention skips those above the diagonal), tiles that
  are allowed entirely are computed without a mask, only the rest evaluate
  it; the masks of repeated tiles are cached (``tile_masks``), and the tile
  that crosses the diagonal is cut at the last key its queries can see.
* **No running maximum.** The maximum only keeps ``exp`` from overflowing, so
  each tile is accumulated as plain ``sum exp(s_j)`` and ``sum exp(s_j) v_j``
  (one pass less, nothing to rescale), and every row's sum is checked at the
  end; a row that overflowed, underflowed or saw nothing is computed again
  with the reference's ``online_softmax``. With scaled dot-product scores of
  ordinary size no row needs it. Asked for the log-sum-exp (``return_lse``),
  a safe row gives ``log(sum_j exp(s_j))`` directly; a redone row gets
  ``m + log(l)`` from ``online_softmax``.
"""

from __future__ import annotations

import math

import array_api_compat
import numpy as np

from ..layouts import PARTIAL, SKIP, tile_plan
from ..masks import causal
from .dense import PARALLEL_MIN_PAIRS, rows_to_redo
from .threads import num_threads, parallel_for, row_block_jobs
from .tile_masks import NOTHING_ALLOWED, CachedElementMask

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


def tiled_attention(
    q, k, v, element_mask, is_causal: bool, block_size: int, scale: float, batch, online_softmax, return_lse=False
):
    """Checked NumPy inputs q (..., L, d), k (..., S, d), v (..., S, dv) -> out (..., L, dv), dtype of q.

    element_mask: None or a ``layouts.ElementMask``; online_softmax: the
    reference's stable loop, used for the rows the fast sums cannot give exactly.
    With ``return_lse``, ``(out, lse)``: lse (..., L) in the dtype computed in.
    """
    L = q.shape[-2]
    S = k.shape[-2]
    xp = array_api_compat.array_namespace(q)
    element_mask = CachedElementMask.wrap(element_mask)
    causal_mask = (
        CachedElementMask(causal(), batch, L, S, xp, array_api_compat.device(q)) if is_causal else None
    )  # tiles by offset

    query_tile = query_tile_rows(block_size, L, math.ceil(4 * num_threads() / math.prod(batch)))
    plan = tile_plan(L, S, query_tile, block_size, is_causal, element_mask)  # (query tiles, key tiles)
    dtype = q.dtype
    work = np.float32 if dtype == np.float16 else dtype
    q, k, v = (x.astype(work, copy=False) for x in (q, k, v))  # no copy when already `work`

    def tile_mask(batch_index, rows: slice, cols: slice):
        """The mask of one PARTIAL tile, None when all of it turns out allowed, or NOTHING_ALLOWED."""
        allowed = None if element_mask is None else element_mask.tile(batch_index, rows, cols)
        if is_causal and cols.stop - 1 > rows.start:  # the tile crosses the diagonal
            below = causal_mask.tile(batch_index, rows, cols)
            allowed = below if allowed is None else allowed & below
        if allowed is not None:  # cheap checks on one (R, C) tile
            if not allowed.any():
                return NOTHING_ALLOWED
            if allowed.all():
                return None
        return allowed

    varies = element_mask is not None and element_mask.varies_with_batch
    out, lse = _tiled_numpy(
        q, k, v, batch, plan, query_tile, block_size, scale, is_causal, tile_mask, varies, online_softmax
    )
    out = out.astype(dtype, copy=False)
    return (out, lse) if return_lse else out


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


def _accumulate_unshifted(q_rows, k, v, tiles, out, lse) -> np.ndarray:
    """NumPy fast path: ``out = sum_j exp(s_j) v_j / sum_j exp(s_j)`` without the running maximum.

    The maximum only keeps the exponentials from overflowing (see the module
    docstring); without it there is nothing to rescale, and each tile costs one
    pass less. Returns the rows (indices) whose sum overflowed, underflowed
    towards zero or was empty, or whose output is not finite: the caller
    computes those again with the stable online softmax. q_rows: (R, d), scaled;
    k: (S, d); v: (S, dv); out: (R, dv) and lse: (R,), written (lse = log of the
    sum; the rows to redo get theirs from the redo).
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
            lse[...] = -np.inf
            return np.empty(0, dtype=np.intp)
        out /= total[:, None]
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        np.log(total, out=lse)
    return rows_to_redo(total, out)


def _tiled_numpy(
    q, k, v, batch, plan, query_tile: int, block_size: int, scale, is_causal, tile_mask, varies, online_softmax
):
    """NumPy: jobs of (query tile, some batch elements), spread over threads."""
    L, d = q.shape[-2:]
    S, dv = v.shape[-2:]
    queries = np.broadcast_to(q, (*batch, L, d))  # views: nothing is copied
    keys = np.broadcast_to(k, (*batch, S, d))
    values = np.broadcast_to(v, (*batch, S, dv))
    out = np.empty((*batch, L, dv), dtype=q.dtype)
    lse = np.empty((*batch, L), dtype=q.dtype)
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

            target, target_lse = out[index][rows], lse[index][rows]  # (R, dv), (R,)
            q_rows = queries[index][rows] * scale  # (R, d)
            tiles = _key_tiles(plan[row_tile], block_size, key_stop, mask_of)
            unsafe = _accumulate_unshifted(q_rows, keys[index], values[index], tiles, target, target_lse)
            if unsafe.size:  # those rows again, the stable way (the masks are cached: same tiles)
                tiles = _key_tiles(plan[row_tile], block_size, key_stop, mask_of)
                tiles = ((cols, None if allowed is None else allowed[unsafe]) for cols, allowed in tiles)
                target[unsafe], target_lse[unsafe] = online_softmax(
                    q_rows[unsafe], keys[index], values[index], tiles, xp, (unsafe.size, dv), return_lse=True
                )

    parallel_for(
        job,
        row_block_jobs(np.count_nonzero(plan, axis=1), batch),
        parallel=L * S * math.prod(batch) >= PARALLEL_MIN_PAIRS,
    )
    return out, lse
