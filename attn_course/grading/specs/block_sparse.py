"""Exercises of lesson 12, making sparsity pay: ``solutions/12_making_sparsity_pay.ipynb``.

* ``block_layout(mask, block)``: from a boolean ``(L, S)`` mask, the boolean
  ``(ceil(L / block), ceil(S / block))`` layout that is ``True`` where a
  ``block x block`` tile holds at least one allowed pair (the last row and
  column of tiles may be partial);
* ``block_sparse_attention(q, k, v, layout, block)``: attention computed only
  on the tiles the layout marks, every pair of a marked tile allowed;
* ``window_tiles(N, window, block)`` (predict, then verify): how many
  ``block x block`` tiles of an ``(N, N)`` problem a sliding window
  ``|i - j| <= window`` marks, a 0-d float64 array.

References: ``attn_course.masks.block_layout`` and
``attn_course.block_sparse_attention`` without an element mask; the tile count
is the package's layout of ``masks.sliding_window(window)``, summed. Layouts are
compared exactly.
"""

from __future__ import annotations

import math

import numpy as np

from ... import masks
from ...sparse import block_sparse_attention as reference_block_sparse
from ..judge import Case, Exercise, Mistake
from .inputs import normal_array
from .secret_inputs import draw_int, multiple, partial, with_unit

__all__ = ["EXERCISES"]

LESSON = "12_making_sparsity_pay"


# --------------------------------------------------------------------------- the layout


def _layout(mask, block, *, reduce=np.any, floor=False, transpose=False):
    mask = np.asarray(mask, dtype=bool)
    L, S = mask.shape
    rows, cols = (L // block, S // block) if floor else (-(-L // block), -(-S // block))
    layout = np.zeros((rows, cols), dtype=bool)
    for r in range(rows):
        for c in range(cols):
            layout[r, c] = reduce(mask[r * block : (r + 1) * block, c * block : (c + 1) * block])
    return layout.T if transpose else layout


def _one_pair(rng, L, S):
    """An (L, S) mask that allows a single pair, drawn at random."""
    mask = np.zeros((L, S), dtype=bool)
    mask[rng.integers(0, L), rng.integers(0, S)] = True
    return mask


def _mask_case(make_mask, block):
    return lambda rng: (make_mask(rng), block)


LAYOUT = Exercise(
    name="block_layout",
    function="block_layout",
    params=("mask", "block"),
    lesson=LESSON,
    reference=masks.block_layout,
    cases=(
        Case(
            "sliding_window",
            "mask: sliding window (16, 16), window 2; block = 4",
            _mask_case(lambda rng: masks.sliding_window_mask(16, 2), 4),
            seed=1201,
            secret=with_unit(
                range(3, 6),
                lambda rng, block: (masks.sliding_window_mask(multiple(rng, block, 3, 5), draw_int(rng, 1, 3)), block),
            ),
        ),
        Case(
            "causal_partial_tiles",
            "mask: causal (10, 10); block = 4: the last row and column of tiles hold 2 positions",
            _mask_case(lambda rng: masks.causal_mask(10), 4),
            seed=1202,
            secret=with_unit(range(3, 6), lambda rng, block: (masks.causal_mask(partial(rng, block, 2, 3)), block)),
            points=2.0,
        ),
        Case(
            "rectangular_sparse",
            "mask: random sparse (9, 14); block = 3",
            _mask_case(lambda rng: rng.random((9, 14)) < 0.06, 3),
            seed=1203,
            points=2.0,
        ),
    ),
    # edge cases a learner never sees (the grader runs them after the public case of the same name passed)
    hidden={
        "causal_partial_tiles": (
            Case(
                "block_larger_than_the_mask",
                "mask: (5, 7) allowing one pair; block = 8: a single, partial tile",
                _mask_case(lambda rng: _one_pair(rng, 5, 7), 8),
                seed=3054,
            ),
        ),
        "rectangular_sparse": (
            Case(
                "block_of_one",
                "mask: random sparse (4, 6); block = 1: every tile is one pair, the layout is the mask",
                _mask_case(lambda rng: rng.random((4, 6)) < 0.3, 1),
                seed=3055,
            ),
        ),
    },
    mistakes=(
        Mistake(
            "all instead of any",
            "A tile must be computed as soon as it holds ONE allowed pair: reduce each tile with .any(), not .all().",
            lambda mask, block: _layout(mask, block, reduce=np.all),
        ),
        Mistake(
            "layout transposed",
            "Rows of the layout are blocks of queries (rows of the mask), columns are blocks of keys: "
            "layout[r, c] looks at mask[r*block:(r+1)*block, c*block:(c+1)*block].",
            lambda mask, block: _layout(mask, block, transpose=True),
        ),
    ),
    hints={
        "dtype": "The layout holds booleans: reduce each tile with .any(), which returns a bool.",
        "shape": "One entry per tile, partial tiles included: (ceil(L / block), ceil(S / block)), e.g. "
        "-(-L // block) or math.ceil(L / block); L // block drops the last, partial tile. Rows are "
        "blocks of queries, columns blocks of keys.",
    },
)


# --------------------------------------------------------------------------- block-sparse attention


def _token_mask(layout, block, L, S):
    return np.repeat(np.repeat(np.asarray(layout, dtype=bool), block, axis=0), block, axis=1)[:L, :S]


def _softmax(scores):
    shifted = scores - scores.max(axis=-1, keepdims=True)
    weights = np.exp(shifted)
    return weights / weights.sum(axis=-1, keepdims=True)


def _dense_masked(q, k, v, keep, scale=True):
    factor = 1.0 / math.sqrt(q.shape[-1]) if scale else 1.0
    scores = (q @ np.swapaxes(k, -1, -2)) * factor
    scores = np.where(keep, scores, -np.inf)
    return (_softmax(scores) @ v).astype(q.dtype)


def _no_scale(q, k, v, layout, block):
    return _dense_masked(q, k, v, _token_mask(layout, block, q.shape[-2], k.shape[-2]), scale=False)


def _ignore_layout(q, k, v, layout, block):
    return _dense_masked(q, k, v, np.ones((q.shape[-2], k.shape[-2]), dtype=bool))


def _softmax_per_tile(q, k, v, layout, block):
    """Each marked tile normalised on its own, and the tiles' outputs added."""
    L = q.shape[-2]
    out = np.zeros((*q.shape[:-1], v.shape[-1]))
    factor = 1.0 / math.sqrt(q.shape[-1])
    for r, c in np.argwhere(np.asarray(layout, dtype=bool)):
        rows = slice(r * block, min(L, (r + 1) * block))
        cols = slice(c * block, (c + 1) * block)
        scores = (q[..., rows, :] @ np.swapaxes(k[..., cols, :], -1, -2)) * factor
        out[..., rows, :] += _softmax(scores) @ v[..., cols, :]
    return out.astype(q.dtype)


def _layout_case(batch, L, S, d, dv, block, layout_rule, dtype=np.float32):
    """q, k, v and a layout in which every row of tiles marks at least one tile."""

    def make(rng):
        q = normal_array(rng, (*batch, L, d), dtype)
        k = (normal_array(rng, (*batch, S, d), dtype) * 1.5).astype(dtype)
        v = normal_array(rng, (*batch, S, dv), dtype)
        rows, cols = -(-L // block), -(-S // block)
        layout = layout_rule(rng, rows, cols)
        return q, k, v, layout, block

    return make


def _banded(rng, rows, cols):
    r, c = np.arange(rows)[:, None], np.arange(cols)[None, :]
    return np.abs(r - c) <= 1


def _random_layout(rng, rows, cols):
    layout = rng.random((rows, cols)) < 0.4
    layout[np.arange(rows), rng.integers(0, cols, size=rows)] = True  # at least one tile per row
    return layout


ATTENTION = Exercise(
    name="block_sparse_attention",
    function="block_sparse_attention",
    params=("q", "k", "v", "layout", "block"),
    lesson=LESSON,
    reference=reference_block_sparse,
    cases=(
        Case(
            "banded_layout",
            "q: float32 (12, 4), k: (12, 4), v: (12, 3), block = 4; layout (3, 3): the diagonal tiles and "
            "their neighbours",
            _layout_case((), 12, 12, 4, 3, 4, _banded),
            seed=1211,
        ),
        Case(
            "partial_tiles",
            "q: float32 (7, 5), k: (10, 5), v: (10, 6), block = 3; random layout (3, 4), the last row and "
            "column of tiles partial",
            _layout_case((), 7, 10, 5, 6, 3, _random_layout),
            seed=1212,
            points=2.0,
        ),
        Case(
            "batched_heads",
            "q: float32 (2, 3, 8, 6), k: (2, 3, 9, 6), v: (2, 3, 9, 2), block = 2; random layout (4, 5), "
            "the same for every batch element and head",
            _layout_case((2, 3), 8, 9, 6, 2, 2, _random_layout),
            seed=1213,
            points=2.0,
        ),
    ),
    hidden={
        "partial_tiles": (
            Case(
                "one_query",
                "q: float32 (1, 5), k: (7, 5), v: (7, 4), block = 3; random layout (1, 3): a single query",
                _layout_case((), 1, 7, 5, 4, 3, _random_layout),
                seed=3056,
            ),
            Case(
                "block_larger_than_the_sequences",
                "q: float32 (5, 4), k: (6, 4), v: (6, 7), block = 8; layout (1, 1): one partial tile, dense attention",
                _layout_case((), 5, 6, 4, 7, 8, _random_layout),
                seed=3057,
            ),
        ),
    },
    mistakes=(
        Mistake(
            "no scaling",
            "Scale the scores by 1 / sqrt(d), d = q.shape[-1], as dense attention does.",
            _no_scale,
        ),
        Mistake(
            "layout ignored",
            "That is dense attention over every key: a query may only use the keys of the tiles marked in its "
            "row of tiles, layout[i // block, j // block].",
            _ignore_layout,
        ),
        Mistake(
            "softmax per tile",
            "Normalise over all the kept keys of a query row at once: gather the keys of every marked tile in "
            "the row of tiles, then take ONE softmax over them, not one softmax per tile.",
            _softmax_per_tile,
        ),
    ),
    hints={
        "shape": "The output has one row per query and one column per value feature: (..., L, dv).",
        "dtype": "Keep q's dtype: float32 in, float32 out (math.sqrt(d), not np.sqrt(d); or .astype(q.dtype) at "
        "the end).",
        "nonfinite": "Every row of tiles here marks at least one tile, so no query is left without keys: "
        "look for a softmax over scores that are all -inf.",
    },
)


def _window_tiles(N, window, block):
    return np.asarray(float(masks.block_layout(masks.sliding_window(window), block, N, N).sum()), dtype=np.float64)


def _band_tiles(N, window, block, *, reach=None, clip=True, one_side=False):
    """Tiles of a band of ``reach`` tile diagonals each side (default ceil(window / block)), as a 0-d float64 array."""
    tiles = -(-N // block)
    reach = -(-window // block) if reach is None else reach
    total = 0
    for r in range(tiles):
        low, high = r - reach, (r if one_side else r + reach)
        if clip:
            low, high = max(low, 0), min(high, tiles - 1)
        total += high - low + 1
    return np.asarray(float(total), dtype=np.float64)


WINDOW_TILES = Exercise(
    name="window_tiles",
    function="window_tiles",
    params=("N", "window", "block"),
    lesson=LESSON,
    reference=_window_tiles,
    cases=(
        Case(
            "small",
            "N = 40, window = 6, block = 8",
            lambda rng: (40, 6, 8),
            seed=1221,
            secret=with_unit(
                (8, 16), lambda rng, block: (multiple(rng, block, 4, 7), draw_int(rng, block // 2, block - 1), block)
            ),
        ),
        Case(
            "window_a_multiple",
            "N = 1000, window = 96, block = 32: a window of whole tiles, N not a multiple of block",
            lambda rng: (1000, 96, 32),
            seed=1222,
            secret=with_unit(
                (16, 32, 64), lambda rng, block: (partial(rng, block, 20, 40), multiple(rng, block, 2, 4), block)
            ),
            points=2.0,
        ),
        Case(
            "wide_window",
            "N = 300, window = 50, block = 16",
            lambda rng: (300, 50, 16),
            seed=1223,
            secret=with_unit(
                (8, 16, 32), lambda rng, block: (partial(rng, block, 10, 30), partial(rng, block, 2, 4), block)
            ),
        ),
    ),
    mistakes=(
        Mistake(
            "edges not clipped",
            "The first and last rows of tiles have no neighbours on one side: a band of tiles is cut off at the "
            "edges of the (N, N) grid.",
            lambda N, w, b: _band_tiles(N, w, b, clip=False),
        ),
        Mistake(
            "straddling tiles forgotten",
            "A tile is computed when it holds ANY allowed pair. The pair with the smallest offset in the tile r - c "
            "diagonals away is (r - c) * block - (block - 1) apart, so a tile that the window only partly reaches "
            "counts too: ceil(window / block) diagonals each side, not window // block.",
            lambda N, w, b: _band_tiles(N, w, b, reach=w // b),
        ),
        Mistake(
            "one side only",
            "This window is not causal: |i - j| <= window reaches window keys before AND after each query.",
            lambda N, w, b: _band_tiles(N, w, b, one_side=True),
        ),
    ),
    hints={
        "type": "Return a 0-d NumPy float64 array: np.asarray(float(count), dtype=np.float64).",
        "shape": "Return a single number as a 0-d array: np.asarray(float(count), dtype=np.float64).",
        "values": "Draw the tile grid for a small case (N = 16, block = 4) and shade the band |i - j| <= window: "
        "count, per row of tiles, which columns of tiles it touches, then sum over the rows.",
    },
)

EXERCISES = (LAYOUT, ATTENTION, WINDOW_TILES)
