"""Masks seen one tile at a time, and the plan of which tiles to compute (private).

Tiled and sparse attention never look at a whole ``(L, S)`` mask. They cut the
scores into tiles of ``rows x cols`` pairs and, for each tile, need to know one
of three things:

* ``SKIP``: no pair of the tile is allowed; the tile is not computed at all;
* ``FULL``: every pair is allowed; the tile is computed without a mask;
* ``PARTIAL``: some pairs are allowed; the mask is evaluated on this tile only.

``ElementMask`` wraps the ``mask`` argument of those functions (a boolean array
or a predicate ``mask_fn(i, j)``), checks it once, and hands out the mask of one
tile; ``tile_plan`` combines causality and the mask's ``BlockCover`` into the
table of tile states.
"""

from __future__ import annotations

import math

import array_api_compat
import numpy as np

from .backend import get_namespace, to_numpy
from .masks import BlockCover, _is_predicate, _tile_bounds, block_cover
from .validation import check_mask, dtype_name, shape_of

__all__ = ["FULL", "PARTIAL", "SKIP", "ElementMask", "merge_tile_rows", "plan_from_cover", "tile_plan"]

SKIP, PARTIAL, FULL = 0, 1, 2
NOTHING_ALLOWED = "nothing allowed"  # what a tile's mask is replaced by when no pair of it is allowed
OFFSET_TILE_CACHE_SIZE = 4096  # tiles of a pattern of offsets kept for reuse (a few MiB at most)


class ElementMask:
    """The ``mask`` argument of tiled or sparse attention: a boolean array or a predicate.

    ``batch`` are the broadcast leading dimensions of q, k, v; the mask must
    broadcast to ``(*batch, L, S)`` without enlarging it.
    """

    def __init__(self, mask, batch: tuple[int, ...], L: int, S: int, xp, device):
        self.batch, self.L, self.S, self.xp, self.device = tuple(batch), L, S, xp, device
        self.is_predicate = _is_predicate(mask)
        self._offset_tiles = None
        if self.is_predicate:
            self.predicate = mask
            leading = self._check_predicate()
            if getattr(mask, "offset_rule", None) is not None and not leading:
                self._offset_tiles = {}  # (i - j of the first pair, R, C) -> tile
        else:
            get_namespace(mask, xp.empty(0, device=device))  # one library for all inputs
            self.array = check_mask(mask, (*batch, L, S), "the attention scores (..., L, S)", xp)
            leading = shape_of(self.array)[:-2]
            self._numpy_view = None
            if array_api_compat.is_numpy_array(self.array):
                self._numpy_view = np.broadcast_to(self.array, (*batch, L, S))  # a view: no copy
        # False when every batch element and head sees the same (L, S) mask: one tile serves them all
        self.varies_with_batch = any(size > 1 for size in leading)

    def _check_predicate(self):
        xp = self.xp
        i = xp.reshape(xp.arange(1, device=self.device), (1, 1))
        try:
            sample = self.predicate(i, i)
        except Exception as err:
            raise TypeError(
                f"mask is callable, so it must be a predicate mask_fn(i, j) that takes integer index arrays "
                f"and returns booleans; calling it failed with {type(err).__name__}: {err}"
            ) from err
        if not array_api_compat.is_array_api_obj(sample) or not xp.isdtype(sample.dtype, "bool"):
            what = dtype_name(sample.dtype) if hasattr(sample, "dtype") else type(sample).__name__
            raise TypeError(f"mask predicate must return booleans for index arrays i, j; got {what}")
        target = (*self.batch, 1, 1)
        ok = sample.ndim <= len(target)
        if ok:
            try:
                ok = tuple(np.broadcast_shapes(shape_of(sample), target)) == target
            except ValueError:
                ok = False
        if not ok:
            raise ValueError(
                f"mask predicate returns shape {shape_of(sample)} for (1, 1) index arrays, which does not "
                f"broadcast to the attention scores (..., L, S) = {(*self.batch, self.L, self.S)}"
            )
        return shape_of(sample)[:-2]

    def cover(self, block: int) -> BlockCover:
        """The mask's ``BlockCover`` for square tiles of ``block``, reduced over the batch dimensions."""
        if self.is_predicate:
            cover = block_cover(self.predicate, block, self.L, self.S)
        else:
            cover = block_cover(to_numpy(self.array), block)
        some, every = np.asarray(cover.some), np.asarray(cover.every)
        leading = tuple(range(some.ndim - 2))
        return BlockCover(np.any(some, axis=leading), np.all(every, axis=leading), cover.every_exact)

    @property
    def has_tile_rule(self) -> bool:
        """True when the cover can be found without visiting every pair (arrays are visited)."""
        return self.is_predicate and getattr(self.predicate, "block_rule", None) is not None

    def tile(self, batch_index, rows: slice, cols):
        """The mask on query rows ``rows`` and key columns ``cols`` (a slice or an index array).

        ``batch_index`` is a tuple into the batch dimensions (NumPy workers: the
        result is ``(R, C)``) or None (all of the batch: ``(..., R, C)``).
        """
        if self.is_predicate:
            return self._predicate_tile(batch_index, rows, cols)
        xp = self.xp
        if batch_index is not None and self._numpy_view is not None:
            return self._numpy_view[batch_index][rows, cols]  # (R, C); batch first, or NumPy moves axes
        part = self.array[..., rows, :]
        if isinstance(cols, slice):
            return part[..., cols]
        return xp.take(part, xp.asarray(cols, device=self.device), axis=part.ndim - 1)

    def _predicate_tile(self, batch_index, rows: slice, cols):
        xp = self.xp
        offset_key = None
        if self._offset_tiles is not None and isinstance(cols, slice):
            # the tile depends only on i - j: one tile per (first row - first column, shape), computed once
            offset_key = (rows.start - cols.start, rows.stop - rows.start, cols.stop - cols.start)
            cached = self._offset_tiles.get(offset_key)
            if cached is not None:
                return cached
        i = xp.reshape(xp.arange(rows.start, rows.stop, device=self.device), (-1, 1))
        if isinstance(cols, slice):
            j = xp.arange(cols.start, cols.stop, device=self.device)
        else:
            j = xp.asarray(cols, device=self.device)
        allowed = self.predicate(i, xp.reshape(j, (1, -1)))
        if offset_key is not None:
            allowed = allowed & xp.ones((i.shape[0], j.shape[0]), dtype=xp.bool, device=self.device)  # (R, C)
            if len(self._offset_tiles) < OFFSET_TILE_CACHE_SIZE:
                self._offset_tiles[offset_key] = allowed
            return allowed
        if batch_index is None:
            return allowed
        full = (*self.batch, i.shape[0], j.shape[0])
        return np.broadcast_to(allowed, np.broadcast_shapes(allowed.shape, full))[batch_index]


def merge_tile_rows(cover: BlockCover, group: int) -> BlockCover:
    """A cover of ``block x block`` tiles turned into one of ``(group * block) x block`` tiles."""
    if group == 1:
        return cover
    rows, cols = cover.some.shape
    merged_rows = math.ceil(rows / group)
    some = np.zeros((merged_rows * group, cols), dtype=bool)
    every = np.ones((merged_rows * group, cols), dtype=bool)
    some[:rows], every[:rows] = cover.some, cover.every
    some = some.reshape(merged_rows, group, cols).any(axis=1)
    every = every.reshape(merged_rows, group, cols).all(axis=1)
    return BlockCover(some, every, cover.every_exact)


def plan_from_cover(some: np.ndarray, every: np.ndarray) -> np.ndarray:
    """``(rows, cols)`` int8 tile states: SKIP where ``some`` is False, else FULL where ``every``, else PARTIAL."""
    plan = np.zeros(some.shape, dtype=np.int8)  # SKIP
    plan[some] = PARTIAL
    plan[some & every] = FULL
    return plan


def tile_plan(L: int, S: int, query_tile: int, key_tile: int, is_causal: bool, element_mask) -> np.ndarray:
    """The state of every ``query_tile x key_tile`` tile of the scores (``query_tile`` a multiple of ``key_tile``)."""
    first_i, last_i = _tile_bounds(query_tile, L)
    first_j, last_j = _tile_bounds(key_tile, S)
    some = np.ones((first_i.size, first_j.size), dtype=bool)
    every = np.ones_like(some)
    if is_causal:
        some &= first_j[None, :] <= last_i[:, None]  # the tile reaches the diagonal
        every &= last_j[None, :] <= first_i[:, None]  # the tile lies entirely below it
    if element_mask is not None:
        if element_mask.has_tile_rule:
            cover = merge_tile_rows(element_mask.cover(key_tile), query_tile // key_tile)
            some &= cover.some
            every &= cover.every
        else:  # an array, or a predicate without a tile rule: look inside each tile while computing it
            every[:] = False
    return plan_from_cover(some, every)
