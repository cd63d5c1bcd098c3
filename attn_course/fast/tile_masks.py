"""Masks of tiles, computed once and reused (for the CPU fast paths).

A pattern that depends only on ``i - j`` (causal, sliding windows, strided)
gives the same mask to every tile with the same first offset and shape: on a
long sequence the tiles along each diagonal repeat. ``CachedElementMask``
keeps those tiles (a few MiB at most) so each is evaluated once; it answers
exactly as ``attn_course.layouts.ElementMask``, whose subclass it is.
"""

from __future__ import annotations

from ..layouts import ElementMask

__all__ = ["NOTHING_ALLOWED", "OFFSET_TILE_CACHE_SIZE", "CachedElementMask"]

NOTHING_ALLOWED = "nothing allowed"  # what a tile's mask is replaced by when no pair of it is allowed
OFFSET_TILE_CACHE_SIZE = 4096  # tiles of a pattern of offsets kept for reuse (a few MiB at most)


class CachedElementMask(ElementMask):
    """``ElementMask`` that remembers the tiles of a pattern of offsets, keyed by (i - j of the first pair, R, C)."""

    def __init__(self, mask, batch, L, S, xp, device):
        super().__init__(mask, batch, L, S, xp, device)
        self._offset_tiles = None
        if self.is_predicate and getattr(mask, "offset_rule", None) is not None and not self.leading:
            self._offset_tiles = {}  # no batch axes: one tile serves every batch element

    @classmethod
    def wrap(cls, element_mask):
        """The cached twin of an ``ElementMask`` (None stays None)."""
        if element_mask is None or isinstance(element_mask, cls):
            return element_mask
        source = element_mask.predicate if element_mask.is_predicate else element_mask.array
        return cls(source, element_mask.batch, element_mask.L, element_mask.S, element_mask.xp, element_mask.device)

    def predicate_tile(self, batch_index, rows: slice, cols):
        if self._offset_tiles is None or not isinstance(cols, slice):
            return super().predicate_tile(batch_index, rows, cols)
        # the tile depends only on i - j: one tile per (first row - first column, shape), computed once
        key = (rows.start - cols.start, rows.stop - rows.start, cols.stop - cols.start)
        cached = self._offset_tiles.get(key)
        if cached is not None:
            return cached
        xp = self.xp
        allowed = super().predicate_tile(None, rows, cols)
        allowed = allowed & xp.ones((key[1], key[2]), dtype=xp.bool, device=self.device)  # (R, C)
        if len(self._offset_tiles) < OFFSET_TILE_CACHE_SIZE:
            self._offset_tiles[key] = allowed
        return allowed
