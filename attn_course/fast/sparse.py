"""Block-sparse attention on NumPy arrays, laid out for a CPU (the fast path of ``sparse.py``).

The same mathematics as the reference ``sparse.attend_marked_blocks``, arranged
for speed:

* **Block rows on threads**, each job a block of query rows for a group of
  heads, most expensive first (``threads.row_block_jobs``).
* **Keys as views.** When a block row's marked tiles are contiguous (a sliding
  window), its keys and values are a slice of ``k`` and ``v``, not a gathered copy.
* **The element mask only where it matters.** The plan (``layouts``) marks
  tiles the mask allows entirely (no mask needed), partial tiles (masked), and
  the rest (skipped); the partial tiles' masks are shared by every head when
  the mask is the same for all.
* **The softmax without the max subtraction** (``dense.softmax_rows_into``),
  rows that would overflow or underflow computed again the stable way.
"""

from __future__ import annotations

import math

import numpy as np

from ..layouts import PARTIAL, SKIP, plan_from_cover
from .dense import PARALLEL_MIN_PAIRS, softmax_rows_into
from .threads import parallel_for, row_block_jobs
from .tile_masks import CachedElementMask

__all__ = ["block_sparse_attention"]


def block_sparse_attention(q, k, v, batch, layout, block_size: int, element_mask, scale: float, cover=None):
    """Checked NumPy inputs -> out (..., L, dv), dtype of q, computing only the tiles ``layout`` marks.

    element_mask: None or a ``layouts.ElementMask``; cover: its ``BlockCover``
    for ``block_size`` when the caller has it already (``sparse_attention``).
    """
    element_mask = CachedElementMask.wrap(element_mask)
    if element_mask is None:
        plan = plan_from_cover(layout, layout)
    elif cover is not None or element_mask.has_tile_rule:  # which tiles the mask allows entirely
        cover = element_mask.cover(block_size) if cover is None else cover
        plan = plan_from_cover(layout & cover.some, cover.every)
    else:  # look inside the marked tiles only
        plan = plan_from_cover(layout, np.zeros_like(layout))
    return _attend_planned_tiles(q, k, v, batch, plan, block_size, element_mask, scale)


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


def _attend_planned_tiles(q, k, v, batch, plan, block_size: int, element_mask, scale: float):
    """For each block of query rows: the keys of its non-skipped tiles, one softmax over them (on threads)."""
    L, d = q.shape[-2:]
    S, dv = v.shape[-2:]
    dtype = q.dtype
    work = np.float32 if dtype == np.float16 else dtype
    q, k, v = (x.astype(work, copy=False) for x in (q, k, v))  # no copy when already `work`
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
    return out.astype(dtype, copy=False)
