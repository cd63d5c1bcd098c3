"""Block layouts: how a mask meets the tiles of the scores.

Tiled and sparse attention cut the scores ``(L, S)`` into tiles of
``block x block`` pairs and never look at the whole mask. For each tile they
need one of three answers:

* **skip**: no pair of the tile is allowed; the tile is not computed at all;
* **full**: every pair is allowed; the tile is computed without a mask;
* **partial**: some pairs are allowed; the mask is evaluated on this tile only.

``block_layout(mask, block)`` is the first question as a boolean table
``(ceil(L / block), ceil(S / block))``: True where a tile holds any allowed
pair (the tiles sparse attention computes). ``block_cover`` adds the second:
which tiles are allowed entirely. For a predicate ``mask_fn(i, j)`` neither
visits the ``L * S`` pairs when the pattern knows a rule: a pattern of offsets
``i - j`` (causal, windows, strided) is decided from its ``L + S - 1`` offsets,
a pattern with a ``tile_rule`` (global tokens, fixed, BigBird) from the corners
of each tile; ``|`` and ``~`` combine those rules. Any other predicate is
evaluated one row of tiles at a time.

``ElementMask`` holds the ``mask`` argument of tiled and sparse attention (an
array or a predicate), checked once, and hands out the mask of one tile;
``tile_plan`` turns causality and a cover into the table of tile states
(``SKIP``, ``PARTIAL``, ``FULL``) that the CPU fast paths follow.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import array_api_compat
import numpy as np

from .backend import creation_namespace, get_namespace, to_numpy
from .validation import as_array, broadcasts_without_enlarging, check_int, check_mask, dtype_name, shape_of

__all__ = [
    "FULL",
    "PARTIAL",
    "SKIP",
    "BlockCover",
    "ElementMask",
    "block_cover",
    "block_layout",
    "check_layout",
    "cover_by_row_chunks",
    "has_tile_rule",
    "is_predicate",
    "plan_from_cover",
    "tile_bounds",
    "tile_plan",
]

SKIP, PARTIAL, FULL = 0, 1, 2


class BlockCover(NamedTuple):
    """How a mask meets the ``block x block`` tiles of the scores, both ``(..., rows, cols)`` boolean NumPy arrays.

    some:  the tile holds at least one allowed pair (exact): the tiles to compute.
    every: every pair of the tile is allowed: no element mask is needed there.
        Always correct where True; ``every_exact=False`` says it may be False
        for a tile that is in fact entirely allowed (the tile is then masked
        element by element, which costs time but changes no result).
    """

    some: np.ndarray
    every: np.ndarray
    every_exact: bool = True


def is_predicate(mask) -> bool:
    """True for a predicate ``mask_fn(i, j)`` (anything callable that is not an array)."""
    return callable(mask) and not array_api_compat.is_array_api_obj(mask)


# --------------------------------------------------------------------------- layouts and covers


def block_layout(mask, block: int, L: int | None = None, S: int | None = None, *, like=None):
    """Which ``block x block`` tiles of the scores hold any allowed pair.

    mask: a boolean array ``(..., L, S)`` or a predicate (then ``L`` and ``S``
    are required). Returns a boolean ``(..., ceil(L/block), ceil(S/block))``
    array, ``True`` where the tile holds at least one allowed pair; the last
    row/column of tiles may be partial.

    A predicate is never evaluated as a whole ``(L, S)`` array: a pattern that
    depends only on ``i - j`` (causal, windows, strided) is decided from the
    ``L + S - 1`` possible offsets; global tokens, Longformer, the fixed and
    BigBird patterns from their tile rules; any other is evaluated one row of
    tiles (``block x S`` pairs) at a time.
    """
    block = check_int("block", block, minimum=1)
    if is_predicate(mask):
        layout = block_cover(mask, block, L, S).some
        xp, device = creation_namespace(like)
        return xp.asarray(layout, device=device)
    mask = _check_mask_array(mask, L, S)
    return _layout_of_array(mask, block, get_namespace(mask))


def block_cover(mask, block: int, L: int | None = None, S: int | None = None) -> BlockCover:
    """The ``BlockCover`` of a mask: which tiles hold some allowed pair, which are entirely allowed.

    Like ``block_layout`` (``block_cover(...).some`` is the layout), plus the
    tiles that need no element mask. Returns NumPy arrays whatever the
    library of an array ``mask``: they plan the work, they are not part of it.
    """
    block = check_int("block", block, minimum=1)
    if is_predicate(mask):
        if L is None or S is None:
            raise ValueError("block_layout of a predicate needs the sequence lengths L and S")
        L = check_int("L", L, minimum=1)
        S = check_int("S", S, minimum=1)
        return _predicate_cover(mask, block, L, S)
    mask = to_numpy(_check_mask_array(mask, L, S))
    xp = array_api_compat.array_namespace(mask)
    return BlockCover(_layout_of_array(mask, block, xp), _layout_of_array(mask, block, xp, every=True))


def has_tile_rule(mask_fn) -> bool:
    """True when a predicate's cover can be found without visiting every pair (see the module docstring)."""
    if getattr(mask_fn, "offset_rule", None) is not None or getattr(mask_fn, "tile_rule", None) is not None:
        return True
    parts = getattr(mask_fn, "parts", None)
    if parts is None:
        return False
    if parts[0] == "|":
        return has_tile_rule(parts[1]) and has_tile_rule(parts[2])
    return parts[0] == "~" and has_tile_rule(parts[1])


def _predicate_cover(mask_fn, block: int, L: int, S: int) -> BlockCover:
    offset_rule = getattr(mask_fn, "offset_rule", None)
    if offset_rule is not None:
        return _cover_from_offsets(offset_rule, block, L, S)
    tile_rule = getattr(mask_fn, "tile_rule", None)
    if tile_rule is not None:
        return cover_by_row_chunks(tile_rule, block, L, S, every_exact=getattr(mask_fn, "every_exact", False))
    parts = getattr(mask_fn, "parts", None)
    if parts is not None and has_tile_rule(mask_fn):
        if parts[0] == "|":
            # a tile holds an allowed pair when either pattern puts one there (exact); it is entirely
            # allowed at least where either pattern allows all of it (the union may cover more)
            mine, theirs = _predicate_cover(parts[1], block, L, S), _predicate_cover(parts[2], block, L, S)
            return BlockCover(mine.some | theirs.some, mine.every | theirs.every, every_exact=False)
        inner = _predicate_cover(parts[1], block, L, S)  # "~"
        if inner.every_exact:  # "not entirely allowed" then means "holds a forbidden pair"
            return BlockCover(~inner.every, ~inner.some, every_exact=True)
    # "&" of two patterns that are not offsets has no exact tile rule: evaluate it tile row by tile row
    return _cover_by_tile_rows(mask_fn, block, L, S)


def _check_mask_array(mask, L, S):
    mask = as_array("mask", mask)
    xp = get_namespace(mask)
    if not xp.isdtype(mask.dtype, "bool"):
        raise TypeError(f"mask must be boolean (True = may attend); got dtype {dtype_name(mask.dtype)}")
    if mask.ndim < 2:
        raise ValueError(f"mask must have at least 2 dimensions (..., L, S); got shape {shape_of(mask)}")
    mask_L, mask_S = shape_of(mask)[-2:]
    if (L is not None and L != mask_L) or (S is not None and S != mask_S):
        raise ValueError(f"L={L}, S={S} do not match the mask of shape {shape_of(mask)}")
    return mask


def _layout_of_array(mask, block: int, xp, every: bool = False):
    """Tile-wise ``any`` (or, with ``every``, ``all``) of a boolean ``(..., L, S)`` array."""
    *batch, L, S = shape_of(mask)
    rows, cols = math.ceil(L / block), math.ceil(S / block)
    device = array_api_compat.device(mask)
    # pad with the value that changes nothing: False for any, True for all
    padded = (xp.ones if every else xp.zeros)((*batch, rows * block, cols * block), dtype=xp.bool, device=device)
    padded[..., :L, :S] = mask
    tiles = xp.reshape(padded, (*batch, rows, block, cols, block))
    reduce = xp.all if every else xp.any
    return reduce(reduce(tiles, axis=-1), axis=-2)  # (..., rows, cols)


def tile_bounds(block: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """First and last position of each tile along an axis of length ``n``."""
    first = np.arange(0, n, block, dtype=np.int64)
    return first, np.minimum(first + block, n) - 1


def cover_by_row_chunks(tile_rule, block: int, L: int, S: int, every_exact: bool) -> BlockCover:
    """Apply ``tile_rule(first_i, last_i, first_j, last_j) -> (some, every)`` to every tile.

    The bounds come as ``(rows, 1)`` and ``(1, cols)`` integer arrays; the rule
    sees a bounded number of tile rows at a time, so that its temporaries stay
    small even for ``L / block = 10^4`` rows of tiles.
    """
    first_i, last_i = tile_bounds(block, L)
    first_j, last_j = tile_bounds(block, S)
    rows, cols = first_i.size, first_j.size
    some = np.empty((rows, cols), dtype=bool)
    every = np.empty((rows, cols), dtype=bool)
    step = max(1, 2**16 // cols)
    for start in range(0, rows, step):
        part = slice(start, start + step)
        part_some, part_every = tile_rule(first_i[part, None], last_i[part, None], first_j[None, :], last_j[None, :])
        some[part], every[part] = part_some, part_every
    return BlockCover(some, every, every_exact)


def _cover_from_offsets(offset_rule, block: int, L: int, S: int) -> BlockCover:
    """Cover of a pattern that depends only on ``d = i - j``, from its ``L + S - 1`` offsets.

    Tile ``(r, c)`` covers offsets ``first_i - last_j .. last_i - first_j``, every
    integer in between; it holds an allowed pair when any of them is allowed,
    and is entirely allowed when all of them are: a prefix sum over the allowed
    offsets answers both in O(1) per tile.
    """
    offsets = np.arange(-(S - 1), L)  # every possible i - j
    allowed = np.asarray(offset_rule(offsets), dtype=bool)
    prefix = np.concatenate([[0], np.cumsum(allowed)])  # prefix[k] = allowed offsets below index k

    def tile_rule(first_i, last_i, first_j, last_j):
        lowest = first_i - last_j + (S - 1)  # as indices into offsets
        highest = last_i - first_j + (S - 1)
        count = prefix[highest + 1] - prefix[lowest]
        return count > 0, count == highest - lowest + 1

    return cover_by_row_chunks(tile_rule, block, L, S, every_exact=True)


def _cover_by_tile_rows(mask_fn, block: int, L: int, S: int) -> BlockCover:
    """Cover of any predicate, evaluated one row of tiles (``block x S`` pairs) at a time."""
    xp = array_api_compat.array_namespace(np.empty(0))
    j = np.arange(S)[None, :]
    some_rows, every_rows = [], []
    for start in range(0, L, block):
        i = np.arange(start, min(start + block, L))[:, None]
        allowed = np.asarray(mask_fn(i, j), dtype=bool)
        allowed = np.broadcast_to(allowed, np.broadcast_shapes(allowed.shape, (i.shape[0], S)))
        some_rows.append(_layout_of_array(allowed, block, xp)[..., 0, :])  # (..., cols)
        every_rows.append(_layout_of_array(allowed, block, xp, every=True)[..., 0, :])
    return BlockCover(np.stack(some_rows, axis=-2), np.stack(every_rows, axis=-2))  # (..., rows, cols)


def check_layout(layout, block_size: int, L: int, S: int) -> np.ndarray:
    """A ``layout`` argument as a NumPy boolean ``(ceil(L / block_size), ceil(S / block_size))`` array."""
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


# --------------------------------------------------------------------------- the mask of one tile


class ElementMask:
    """The ``mask`` argument of tiled or sparse attention: a boolean array or a predicate, checked once.

    ``batch`` are the broadcast leading dimensions of q, k, v; the mask must
    broadcast to ``(*batch, L, S)`` without enlarging it. ``tile(...)`` gives
    the mask of one tile of the scores.
    """

    def __init__(self, mask, batch: tuple[int, ...], L: int, S: int, xp, device):
        self.batch, self.L, self.S, self.xp, self.device = tuple(batch), L, S, xp, device
        self.is_predicate = is_predicate(mask)
        if self.is_predicate:
            self.predicate = mask
            leading = self._check_predicate()
        else:
            get_namespace(mask, xp.empty(0, device=device))  # one library for all inputs
            self.array = check_mask(mask, (*batch, L, S), "the attention scores (..., L, S)", xp)
            leading = shape_of(self.array)[:-2]
            self._numpy_view = None
            if array_api_compat.is_numpy_array(self.array):
                self._numpy_view = np.broadcast_to(self.array, (*batch, L, S))  # a view: no copy
        self.leading = leading  # the mask's own leading (batch) dimensions
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
        if not broadcasts_without_enlarging(shape_of(sample), (*self.batch, 1, 1)):
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
        return self.is_predicate and has_tile_rule(self.predicate)

    def tile(self, batch_index, rows: slice, cols):
        """The mask on query rows ``rows`` and key columns ``cols`` (a slice or an index array).

        ``batch_index`` is a tuple into the batch dimensions (the result is
        ``(R, C)``) or None (all of the batch: ``(..., R, C)``, broadcastable).
        """
        if self.is_predicate:
            return self.predicate_tile(batch_index, rows, cols)
        xp = self.xp
        if batch_index is not None and self._numpy_view is not None:
            return self._numpy_view[batch_index][rows, cols]  # (R, C); batch first, or NumPy moves axes
        part = self.array  # (..., L or 1, S or 1): an axis of size 1 broadcasts, it is not sliced
        if shape_of(part)[-2] != 1:
            part = part[..., rows, :]
        if shape_of(part)[-1] == 1:
            return part
        if isinstance(cols, slice):
            return part[..., cols]
        return xp.take(part, xp.asarray(cols, device=self.device), axis=part.ndim - 1)

    def predicate_tile(self, batch_index, rows: slice, cols):
        """The predicate evaluated on the tile's index arrays (see ``tile``)."""
        xp = self.xp
        i = xp.reshape(xp.arange(rows.start, rows.stop, device=self.device), (-1, 1))
        if isinstance(cols, slice):
            j = xp.arange(cols.start, cols.stop, device=self.device)
        else:
            j = xp.asarray(cols, device=self.device)
        allowed = self.predicate(i, xp.reshape(j, (1, -1)))
        if batch_index is None:
            return allowed
        full = (*self.batch, i.shape[0], j.shape[0])
        return np.broadcast_to(allowed, np.broadcast_shapes(allowed.shape, full))[batch_index]


# --------------------------------------------------------------------------- tile plans


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
    first_i, last_i = tile_bounds(query_tile, L)
    first_j, last_j = tile_bounds(key_tile, S)
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
