"""Dense attention on NumPy arrays, laid out for a CPU (the fast path of ``scaled_dot_product_attention``).

The same mathematics as the reference code in ``attention.py``, arranged so that
the work fits the caches and uses every core:

* **Threads over heads and row blocks.** Every ``(batch..., block of query
  rows)`` is an independent job (``threads.parallel_for``): BLAS and the
  ufuncs release the GIL, so the jobs run on all cores.
* **Cache-sized row blocks.** A block of ``R`` query rows produces scores
  ``(R, S)`` of about 2 MiB, which stay in the CPU's caches (here 1 MiB of L2
  per core, 32 MiB of shared L3) through the softmax passes (max, subtract,
  exp, sum) instead of streaming an ``(L, S)`` matrix through main memory four
  times. The passes work in place (``out=``). (Measured: 2 MiB blocks beat
  256-512 KiB ones, whose matrix products have too few rows to be efficient.)
* **Less work per element.** The scale multiplies ``q`` (``R x d`` numbers)
  rather than the scores (``R x S``); the softmax's division is applied to the
  output rows (``R x dv``) rather than to the weights (``R x S``):

      out_i = sum_j exp(s_ij - m_i) v_j / sum_j exp(s_ij - m_i)

* **Causal row blocks stop at the diagonal.** Rows ``[r0, r1)`` only look at
  keys ``j < r1``, and only the last ``r1 - r0`` of them need the mask.
* **No max subtraction** unless a row needs it (``softmax_rows_into``): the
  maximum only keeps ``exp`` from overflowing; rows whose sums leave the safe
  range are computed again the stable way.
"""

from __future__ import annotations

import numpy as np

from .threads import batch_index_tuples, parallel_for

__all__ = [
    "PARALLEL_MIN_PAIRS",
    "all_at_once",
    "dense_attention",
    "rows_per_block",
    "rows_to_redo",
    "softmax_rows_into",
]

SCORE_BLOCK_BYTES = 2 * 1024 * 1024  # a block of scores that stays in cache
PARALLEL_MIN_PAIRS = 1 << 20  # below this many (query, key) pairs in all, threads cost more than they save


def rows_per_block(S: int, itemsize: int = 4) -> int:
    """Query rows per block: scores ``(rows, S)`` of about ``SCORE_BLOCK_BYTES``, 32 to 512 rows.

    At least 32 rows keep the matrix products efficient for long ``S``.
    """
    return int(min(512, max(32, SCORE_BLOCK_BYTES // (itemsize * max(S, 1)))))


def softmax_rows_into(q_rows, keys_t, values, out, masked_parts=()):
    """``out[:] = softmax(q_rows @ keys_t) @ values`` for one block of query rows; NumPy, in place.

    q_rows: (R, d), already multiplied by the scale; keys_t: (d, C); values: (C, dv);
    out: (R, dv) array to write, of the same dtype.
    masked_parts: ``(columns, allowed)`` pairs, ``columns`` a slice of the C
        keys and ``allowed`` boolean (R, width of the slice); keys outside
        every part are all allowed. Only these parts are masked: a causal
        block, or the partial tiles of a sparse pattern, not the whole row.
    A row that may attend to nothing gets a zero output row.

    Subtracting each row's maximum before ``exp`` (lesson 02) only keeps the
    exponentials from overflowing; the weights are the same without it. So the
    block is first computed without that pass (one read and one write of the
    ``(R, C)`` scores saved) and each row's sum is checked: a row whose sum
    overflowed, underflowed towards zero or was empty, or whose output is not
    finite, is computed again the stable way. With scores of ordinary size
    (attention's scaled dot products) no row needs it.
    """
    scores = q_rows @ keys_t  # (R, C)
    _mask_into(scores, masked_parts)
    totals = _unshifted_weighted_sum_into(scores, values, out)  # (R, 1)
    rows = rows_to_redo(totals[:, 0], out)
    if rows.size:
        parts = [(columns, allowed[rows]) for columns, allowed in masked_parts]
        out[rows] = _stable_softmax_rows(q_rows[rows], keys_t, values, parts)


# A row sum in this range means no exponential overflowed, and the largest terms are normal
# numbers (not denormals that lost precision): the fast path's result is exact to rounding.
SMALLEST_SAFE_TOTAL = 1e-20
LARGEST_SAFE_TOTAL = 1e30


def rows_to_redo(totals, out) -> np.ndarray:
    """Rows the unshifted fast path got wrong: sum out of the safe range (NaN too) or output not finite.

    totals: (R,) the sums of exp(scores); out: (R, dv) the normalised outputs.
    """
    safe = (totals >= SMALLEST_SAFE_TOTAL) & (totals <= LARGEST_SAFE_TOTAL) & np.isfinite(out).all(axis=1)
    return np.flatnonzero(~safe)


def _unshifted_weighted_sum_into(scores, values, out):
    """``out[:] = exp(scores) @ values / row sums`` without the max shift; ``scores`` is overwritten by exp(scores).

    scores: (..., R, C), values: (..., C, dv), out: (..., R, dv). Returns the row sums (..., R, 1), which
    ``rows_to_redo`` checks: a row that overflowed or underflowed must be computed again the stable way.
    """
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        np.exp(scores, out=scores)  # unnormalised weights, unless a row overflows
        totals = np.sum(scores, axis=-1, keepdims=True)
        np.matmul(scores, values, out=out)
        out /= totals
    return totals


def _mask_into(scores, masked_parts):
    for columns, allowed in masked_parts:
        np.copyto(scores[:, columns], -np.inf, where=~allowed)


def _stable_softmax_rows(q_rows, keys_t, values, masked_parts):
    """The textbook stable computation (subtract each row's maximum) for a few rows: (R, dv)."""
    scores = q_rows @ keys_t  # (R, C)
    _mask_into(scores, masked_parts)
    row_max = np.max(scores, axis=1, keepdims=True)  # (R, 1)
    row_max[row_max == -np.inf] = 0.0  # nothing allowed: exp(-inf - 0) = 0 below, not NaN
    np.subtract(scores, row_max, out=scores)
    np.exp(scores, out=scores)
    totals = np.sum(scores, axis=1, keepdims=True)
    totals[totals == 0] = 1.0  # rows with nothing allowed are all zero already
    return (scores @ values) / totals


def dense_attention(q, k, v, mask, is_causal: bool, scale: float, batch: tuple[int, ...]):
    """``softmax(q k^T * scale) v`` for checked NumPy inputs; the result is float32 for float16 inputs.

    q: (..., L, d), k: (..., S, d), v: (..., S, dv); mask: None or boolean,
    broadcastable to (*batch, L, S); is_causal: keys ``j <= i`` only.
    Returns out (*batch, L, dv) in the compute dtype.
    """
    work = np.float32 if q.dtype == np.float16 else q.dtype
    q, k, v = (np.asarray(x, dtype=work) for x in (q, k, v))
    L, d = q.shape[-2:]
    S, dv = v.shape[-2:]
    queries = np.broadcast_to(q, (*batch, L, d))  # views: nothing is copied
    keys = np.broadcast_to(k, (*batch, S, d))
    values = np.broadcast_to(v, (*batch, S, dv))
    masks = None if mask is None else np.broadcast_to(mask, (*batch, L, S))
    out = np.empty((*batch, L, dv), dtype=work)
    block_rows = rows_per_block(S, np.dtype(work).itemsize)

    below_diagonal = None
    if is_causal:  # every diagonal block has the same triangle: key j - start <= query i - start
        below_diagonal = np.arange(block_rows)[None, :] <= np.arange(block_rows)[:, None]  # (R, R)

    def job(item):
        index, start = item
        stop = min(L, start + block_rows)
        keys_end = min(S, stop) if is_causal else S  # a causal row i < stop sees keys j <= i only
        masked_parts = []
        if masks is not None:
            masked_parts.append((slice(0, keys_end), masks[index][start:stop, :keys_end]))  # (R, keys_end)
        if is_causal and start < keys_end:  # the block reaches the diagonal: mask the columns j >= start
            triangle = below_diagonal[: stop - start, : keys_end - start]
            if masked_parts:
                combined = masked_parts[0][1].copy()
                combined[:, start:] &= triangle
                masked_parts = [(slice(0, keys_end), combined)]
            else:
                masked_parts.append((slice(start, keys_end), triangle))
        q_rows = queries[index][start:stop] * np.asarray(scale, dtype=work)  # (R, d)
        keys_t, values_rows = keys[index][:keys_end].T, values[index][:keys_end]  # (d, keys_end), (keys_end, dv)
        softmax_rows_into(q_rows, keys_t, values_rows, out[index][start:stop], masked_parts)

    total_pairs = L * S * int(np.prod(batch, dtype=np.int64))
    small = total_pairs < PARALLEL_MIN_PAIRS and masks is None and not is_causal
    if small and all_at_once(queries, keys, values, scale, out):
        return out  # a small unmasked problem (one decoding step): every head in one batched product

    jobs = [(index, start) for index in batch_index_tuples(batch) for start in range(0, L, block_rows)]
    if is_causal:  # the last rows see the most keys: hand them out first, so that no thread finishes alone
        jobs.sort(key=lambda item: -item[1])
    parallel_for(job, jobs, parallel=total_pairs >= PARALLEL_MIN_PAIRS)
    return out


def all_at_once(queries, keys, values, scale, out) -> bool:
    """``out[:] = softmax(queries keys^T * scale) values`` for every head in one batched product; NumPy, no mask.

    queries: (..., L, d), keys: (..., S, d), values: (..., S, dv), out: (..., L, dv).
    For small problems, where a Python loop over heads costs more than the
    arithmetic (a decoding step: L = 1). Unshifted like ``softmax_rows_into``;
    returns False, leaving ``out`` to be overwritten, when some row left the
    safe range (the caller then takes the row-block path, which redoes such rows).
    """
    scores = (queries * np.asarray(scale, dtype=out.dtype)) @ np.swapaxes(keys, -1, -2)  # (..., L, S)
    totals = _unshifted_weighted_sum_into(scores, values, out)  # (..., L, 1)
    flat = out.reshape(-1, out.shape[-1])  # (rows, dv)
    return rows_to_redo(totals.reshape(-1), flat).size == 0
