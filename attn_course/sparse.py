"""Block-sparse attention: compute only the tiles of the scores that a pattern allows.

Sparse patterns (sliding windows, Longformer, BigBird, the Sparse Transformer's
strided and fixed patterns) let each query attend to a few keys. Computing the
dense ``(L, S)`` scores and masking most of them away wastes nearly all the
work. Instead, cut the scores into ``block_size x block_size`` tiles and keep a
boolean **layout** ``(ceil(L / block_size), ceil(S / block_size))``: ``True``
where the tile holds a pair that may attend. For the block of query rows ``r``,
with the set ``C_r`` of marked key blocks,

    out_i = sum_{j in K_r} w_ij v_j,    w_ij = exp(s_ij) [allowed(i, j)] / sum_{j' in K_r} exp(s_ij') [allowed(i, j')]

where ``K_r`` are the keys of the blocks in ``C_r`` and ``s_ij = q_i . k_j * scale``.
Keys outside ``K_r`` would only add ``exp(-inf) = 0`` to both sums, so this is
exactly dense masked attention. The work per block row is one small dense
softmax over ``|K_r| = |C_r| * block_size`` keys, gathered once: time and
memory grow with the number of marked blocks, not with ``L * S``. A sliding
window of ``w`` each side marks about ``2 w / block_size + 2`` blocks per row:
``O(L * w)`` instead of ``O(L^2)``.

An element mask (array, or predicate ``mask_fn(i, j)``) refines the blocks: it
is applied only inside *partial* blocks (those it does not allow entirely,
found from the predicate's ``BlockCover`` when the pattern has a tile rule);
blocks it allows entirely are computed without a mask. ``sparse_attention``
derives the layout from the mask itself (``masks.block_cover``), so it returns
what dense masked attention returns while touching only the marked blocks.
"""

from __future__ import annotations

import math

import array_api_compat
import numpy as np

from ._mask_tiles import PARTIAL, SKIP, ElementMask, plan_from_cover
from ._numpy_attention import PARALLEL_MIN_PAIRS, softmax_rows_into
from ._parallel import parallel_for, row_block_jobs
from .attention import check_qkv
from .backend import to_numpy
from .softmax import masked_softmax
from .validation import as_array, check_int, check_scale, compute_dtype, dtype_name, shape_of

__all__ = ["block_sparse_attention", "sparse_attention"]


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
    layout = _check_layout(layout, block_size, L, S)
    scale = check_scale(scale, d)
    element_mask = None if mask is None else ElementMask(mask, batch, L, S, xp, array_api_compat.device(q))
    if element_mask is None:
        plan = plan_from_cover(layout, layout)
    elif element_mask.has_tile_rule:  # cheap: the pattern says which tiles it allows entirely
        cover = element_mask.cover(block_size)
        plan = plan_from_cover(layout & cover.some, cover.every)
    else:  # look inside the marked tiles only
        plan = plan_from_cover(layout, np.zeros_like(layout))
    return _attend_planned_tiles(q, k, v, xp, batch, plan, block_size, element_mask, scale)


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
    cover = element_mask.cover(block_size)  # the layout, and the tiles that need no element mask
    plan = plan_from_cover(cover.some, cover.every)
    return _attend_planned_tiles(q, k, v, xp, batch, plan, block_size, element_mask, check_scale(None, d))


def _check_layout(layout, block_size: int, L: int, S: int) -> np.ndarray:
    """The layout as a NumPy boolean ``(ceil(L / block_size), ceil(S / block_size))`` array."""
    if layout is None:
        raise TypeError("layout must be a boolean array (query blocks, key blocks); got None")
    layout = as_array("layout", layout)
    if not array_api_compat.array_namespace(layout).isdtype(layout.dtype, "bool"):
        raise TypeError(
            f"layout must be boolean (True = compute this block); got dtype {dtype_name(layout.dtype)}. "
            "Build one with masks.block_layout(mask, block_size, L, S)"
        )
    expected = (math.ceil(L / block_size), math.ceil(S / block_size))
    if layout.ndim != 2:
        raise ValueError(
            f"layout must be 2-d (query blocks, key blocks) = {expected}, shared by every batch element "
            f"and head; got shape {shape_of(layout)}"
        )
    if shape_of(layout) != expected:
        raise ValueError(
            f"layout of shape {shape_of(layout)} does not match block_size={block_size} for L={L}, S={S}: "
            f"expected (ceil(L / block_size), ceil(S / block_size)) = {expected}"
        )
    return to_numpy(layout).astype(bool, copy=False)


class _RowKeys:
    """The keys one block of query rows attends to: those of its non-skipped tiles.

    selection: how to gather them: a slice when the tiles are contiguous (a
        view, no copy), else an index array of the key positions ``(K,)``;
    partial: ``(gathered, keys)`` slice pairs, one per run of adjacent PARTIAL
        tiles: where the run lies among the gathered keys, and which keys it
        holds. Only these runs need the element mask.
    """

    def __init__(self, plan_row, block_size: int, S: int):
        marked = np.flatnonzero(plan_row != SKIP)
        self.empty = marked.size == 0
        self.partial = []
        if self.empty:
            return
        starts = marked * block_size
        widths = np.minimum(starts + block_size, S) - starts
        if marked[-1] - marked[0] + 1 == marked.size:
            self.selection = slice(int(starts[0]), int(starts[-1] + widths[-1]))
        else:
            positions = (starts[:, None] + np.arange(block_size)[None, :]).ravel()
            self.selection = positions[positions < S]  # only the last tile can be shorter
        in_partial = np.flatnonzero(plan_row[marked] == PARTIAL)  # positions among the marked tiles
        if in_partial.size == 0:
            return
        offsets = np.concatenate([[0], np.cumsum(widths)])  # where each tile starts among the gathered keys
        # a run of partial tiles continues while the tiles are neighbours both among the marked ones and in S
        breaks = np.flatnonzero((np.diff(in_partial) != 1) | (np.diff(marked[in_partial]) != 1)) + 1
        for run in np.split(in_partial, breaks):
            first, last = int(run[0]), int(run[-1])
            gathered = slice(int(offsets[first]), int(offsets[last + 1]))
            keys = slice(int(starts[first]), int(starts[last] + widths[last]))
            self.partial.append((gathered, keys))

    @property
    def count(self) -> int:
        if isinstance(self.selection, slice):
            return self.selection.stop - self.selection.start
        return int(self.selection.size)


def _masked_parts(element_mask, batch_index, rows: slice, row_keys: _RowKeys) -> list:
    """``(gathered columns, allowed)`` for the partial runs of one block of rows; parts allowed entirely are dropped."""
    parts = []
    for gathered, keys in row_keys.partial:
        allowed = element_mask.tile(batch_index, rows, keys)  # (R, width) or (..., R, width)
        if batch_index is not None and allowed.all():
            continue
        parts.append((gathered, allowed))
    return parts


def _attend_planned_tiles(q, k, v, xp, batch, plan, block_size: int, element_mask, scale: float):
    """For each block of query rows: gather the keys of its non-skipped tiles, one dense masked softmax."""
    L, d = shape_of(q)[-2:]
    S, dv = shape_of(v)[-2:]
    dtype, work = q.dtype, compute_dtype(q.dtype, xp)
    q, k, v = (xp.astype(x, work, copy=False) for x in (q, k, v))  # no copy when already `work`
    device = array_api_compat.device(q)

    if array_api_compat.is_numpy_array(q):
        queries = np.broadcast_to(q, (*batch, L, d))  # views: nothing is copied
        keys_all = np.broadcast_to(k, (*batch, S, d))
        values_all = np.broadcast_to(v, (*batch, S, dv))
        out = np.empty((*batch, L, dv), dtype=work)
        work_scale = np.asarray(scale, dtype=work)

        def job(item):
            row, batch_indices = item
            rows = slice(row * block_size, min(L, (row + 1) * block_size))
            keys = _RowKeys(plan[row], block_size, S)
            if keys.empty:  # no marked tile: nothing to attend to
                for index in batch_indices:
                    out[index][rows] = 0
                return
            parts = []
            for number, index in enumerate(batch_indices):
                if number == 0 or (element_mask is not None and element_mask.varies_with_batch):
                    parts = _masked_parts(element_mask, index, rows, keys) if keys.partial else []
                key_rows = keys_all[index][keys.selection]  # (K, d): a view for a slice, a copy for an index array
                value_rows = values_all[index][keys.selection]  # (K, dv)
                q_rows = queries[index][rows] * work_scale  # (R, d)
                softmax_rows_into(q_rows, key_rows.T, value_rows, out[index][rows], parts)

        marked_pairs = int(np.count_nonzero(plan)) * block_size * block_size * math.prod(batch)
        parallel_for(
            job, row_block_jobs(np.count_nonzero(plan, axis=1), batch), parallel=marked_pairs >= PARALLEL_MIN_PAIRS
        )
        return xp.astype(out, dtype, copy=False)

    pieces = []
    for row in range(plan.shape[0]):
        rows = slice(row * block_size, min(L, (row + 1) * block_size))
        keys = _RowKeys(plan[row], block_size, S)
        if keys.empty:
            pieces.append(xp.zeros((*batch, rows.stop - rows.start, dv), dtype=work, device=device))
            continue
        if isinstance(keys.selection, slice):
            key_rows, value_rows = k[..., keys.selection, :], v[..., keys.selection, :]
        else:
            index = xp.asarray(keys.selection, device=device)
            key_rows, value_rows = xp.take(k, index, axis=k.ndim - 2), xp.take(v, index, axis=v.ndim - 2)
        allowed = None
        if keys.partial:  # all allowed, except inside the partial runs
            parts = _masked_parts(element_mask, None, rows, keys)
            shape = np.broadcast_shapes(*(shape_of(part)[:-1] for _, part in parts), (rows.stop - rows.start,))
            allowed = xp.ones((*shape, keys.count), dtype=xp.bool, device=device)  # (..., R, K)
            for gathered, part in parts:
                allowed[..., gathered] = part
        scores = (q[..., rows, :] * scale) @ xp.matrix_transpose(key_rows)  # (..., R, K)
        weights = masked_softmax(scores, -1, allowed, xp)  # (..., R, K)
        piece = weights @ value_rows  # (..., R, dv)
        pieces.append(xp.broadcast_to(piece, (*batch, *shape_of(piece)[-2:])))
    return xp.astype(xp.concat(pieces, axis=-2), dtype, copy=False)
