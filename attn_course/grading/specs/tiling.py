"""Exercises of lesson 13, memory-efficient exact attention: ``solutions/13_memory_efficient_exact_attention.ipynb``.

* ``online_softmax_step(m, l, acc, scores, values)``: one step of the online
  softmax. The running maximum ``m (L, 1)``, running sum ``l (L, 1)`` and
  running (unnormalised) output ``acc (L, dv)`` absorb one tile of scores
  ``(L, C)`` and its values ``(C, dv)``; returns ``(m_new, l_new, acc_new)``;
* ``tiled_attention(q, k, v, block)``: scaled dot-product attention computed
  one tile of ``block`` keys at a time, never building the ``(L, S)`` scores;
* ``causal_tiled_attention(q, k, v, block)`` (an extension): causal attention in
  ``block x block`` tiles that never visits a tile above the diagonal, returning
  ``(out, lse)`` with ``lse`` the log-sum-exp of each row's scaled causal scores,
  ``m + log(l)``;
* ``causal_tiles(N, block)`` (predict, then verify): how many tiles that visits,
  ``T (T + 1) / 2`` with ``T = ceil(N / block)``, a 0-d float64 array.

References: the online-softmax update written out in float64 (the package has
no public single step), and ``attn_course.tiled_attention``, which agrees with
dense attention up to rounding (``is_causal=True, return_lse=True`` for the
causal extension); the tile count is the package's block layout of
``masks.causal()``, summed.
"""

from __future__ import annotations

import math

import numpy as np

from ... import masks
from ...tiled import tiled_attention as reference_tiled
from ..judge import Case, Exercise, Invariant, Mistake, format_index, format_number
from .inputs import normal_array
from .secret_inputs import multiple, partial, redrawn, with_unit

__all__ = ["EXERCISES"]

LESSON = "13_memory_efficient_exact_attention"


# --------------------------------------------------------------------------- one step


def _step(m, l, acc, scores, values, *, rescale_acc=True, rescale_l=True, alpha_sign=1, tile_max=False):
    """The online-softmax update, with switches for the classic mistakes."""
    m_new = np.maximum(m, scores.max(axis=-1, keepdims=True))  # (L, 1)
    alpha = np.exp(alpha_sign * (m - m_new))  # (L, 1): exp(m_old - m_new)
    shift = scores.max(axis=-1, keepdims=True) if tile_max else m_new
    p = np.exp(scores - shift)  # (L, C)
    l_new = (alpha * l if rescale_l else l) + p.sum(axis=-1, keepdims=True)
    acc_new = (alpha * acc if rescale_acc else acc) + p @ values
    return m_new, l_new, acc_new


def _some_rows_get_a_new_maximum(m, l, acc, scores, values):
    new = scores.max(axis=-1, keepdims=True) > m
    return bool(new.any()) and not bool(new.all())


def _state_case(L, C, dv, *, first=False, jump=0.0, dtype=np.float32):
    """A consistent running state (from an earlier tile of 4 keys), and a new tile shifted by ``jump``."""

    def make(rng):
        earlier = normal_array(rng, (L, 4), dtype) * 2
        earlier_values = normal_array(rng, (4, dv), dtype)
        scores = (normal_array(rng, (L, C), dtype) * 2 + jump).astype(dtype)
        values = normal_array(rng, (C, dv), dtype)
        if first:
            m = np.full((L, 1), -np.inf, dtype=dtype)
            return m, np.zeros((L, 1), dtype), np.zeros((L, dv), dtype), scores, values
        m = earlier.max(axis=-1, keepdims=True)
        p = np.exp(earlier - m)
        return m, p.sum(axis=-1, keepdims=True).astype(dtype), (p @ earlier_values).astype(dtype), scores, values

    return make


def sum_at_least_one() -> Invariant:
    """The running sum counts exp(0) = 1 for the largest score seen so far."""

    def violation(outputs, args, tol):
        l_new = outputs[1]
        bad = l_new < 1 - tol["atol"] - tol["rtol"]
        if bool(np.any(bad)):
            first = np.argwhere(bad)[0]
            return f"l_new{format_index(first)} is {format_number(l_new[tuple(first)])}"
        return None

    return Invariant("l_new >= 1: the largest score seen so far adds exp(0) = 1 to the sum", violation)


STEP = Exercise(
    name="online_softmax_step",
    function="online_softmax_step",
    params=("m", "l", "acc", "scores", "values"),
    lesson=LESSON,
    reference=_step,
    outputs=("m_new", "l_new", "acc_new"),
    cases=(
        Case(
            "first_tile",
            "the first tile: m = -inf (3, 1), l = 0 (3, 1), acc = 0 (3, 2); scores float32 (3, 5), values (5, 2)",
            _state_case(3, 5, 2, first=True),
            seed=301,
        ),
        Case(
            "new_maximum",
            "a later tile whose scores beat the running maximum: m, l (4, 1), acc (4, 6); scores float32 (4, 7), "
            "values (7, 6)",
            _state_case(4, 7, 6, jump=5.0),
            seed=302,
            points=2.0,
        ),
        Case(
            "mixed_float64",
            "float64: m, l (6, 1), acc (6, 3); scores (6, 2), values (2, 3); some rows get a new maximum, some not",
            _state_case(6, 2, 3, dtype=np.float64),
            seed=303,
            secret=redrawn(_state_case(6, 2, 3, dtype=np.float64), _some_rows_get_a_new_maximum),
        ),
    ),
    # edge cases a learner never sees (the grader runs them after the public case of the same name passed)
    hidden={
        "new_maximum": (
            Case(
                "one_key_tile",
                "a later tile of a single key: m, l (5, 1), acc (5, 3); scores float32 (5, 1), values (1, 3)",
                _state_case(5, 1, 3, jump=2.0),
                seed=3058,
            ),
            Case(
                "one_query",
                "a later tile for a single query: m, l (1, 1), acc (1, 4); scores float32 (1, 6), values (6, 4)",
                _state_case(1, 6, 4, jump=3.0),
                seed=3059,
            ),
            Case(
                "scores_near_1000",
                "a later tile whose scores are near 1000: m, l (3, 1), acc (3, 2); scores float32 (3, 5), values "
                "(5, 2): exp() of a score overflows, only differences from the maximum may go through exp()",
                _state_case(3, 5, 2, jump=1000.0),
                seed=3060,
            ),
        ),
    },
    invariants=(sum_at_least_one(),),
    mistakes=(
        Mistake(
            "accumulator not rescaled",
            "When the maximum grows from m to m_new, what acc already holds was computed relative to the old "
            "maximum: multiply it by exp(m - m_new) before adding this tile's p @ values.",
            lambda *args: _step(*args, rescale_acc=False),
        ),
        Mistake(
            "running sum not rescaled",
            "The running sum l was also computed relative to the old maximum: l_new = exp(m - m_new) * l + "
            "p.sum(axis=-1, keepdims=True).",
            lambda *args: _step(*args, rescale_l=False),
        ),
        Mistake(
            "neither rescaled",
            "Both l and acc hold sums of exp(s - m_old): multiply both by alpha = exp(m - m_new) before adding "
            "this tile's contribution.",
            lambda *args: _step(*args, rescale_acc=False, rescale_l=False),
        ),
        Mistake(
            "alpha the wrong way round",
            "alpha = exp(m - m_new), the old maximum minus the new one: it is at most 1, because m_new >= m.",
            lambda *args: _step(*args, alpha_sign=-1),
        ),
        Mistake(
            "tile exponentials relative to the tile's own maximum",
            "Take this tile's exponentials relative to the new running maximum, p = exp(scores - m_new), so that "
            "they share one scale with the rescaled l and acc.",
            lambda *args: _step(*args, tile_max=True),
        ),
    ),
    hints={
        "type": "Return the three results together, as a tuple: return m_new, l_new, acc_new.",
        "shape": "m_new and l_new keep the shape (L, 1) of m and l (use keepdims=True); acc_new is (L, dv).",
        "nonfinite": "At the first tile m is -inf: exp(m - m_new) = exp(-inf) = 0 is fine, but never subtract "
        "-inf from -inf. Use np.maximum(m, tile max) for m_new.",
    },
)


# --------------------------------------------------------------------------- tiled attention


def _tiled(q, k, v, block, *, scale=True, rescale_acc=True, floor_tiles=False):
    factor = 1.0 / math.sqrt(q.shape[-1]) if scale else 1.0
    m = np.full((*q.shape[:-1], 1), -np.inf)
    l = np.zeros_like(m)
    acc = np.zeros((*q.shape[:-1], v.shape[-1]))
    S = k.shape[-2]
    stop = S - S % block if floor_tiles else S
    for start in range(0, stop, block):
        s = (q @ np.swapaxes(k[..., start : start + block, :], -1, -2)) * factor
        m, l, acc = _step(m, l, acc, s, v[..., start : start + block, :], rescale_acc=rescale_acc)
    return (acc / l).astype(q.dtype)


def _qkv_block(batch, L, S, d, dv, block, dtype=np.float32):
    def make(rng):
        q = normal_array(rng, (*batch, L, d), dtype)
        k = normal_array(rng, (*batch, S, d), dtype) * 1.5
        v = normal_array(rng, (*batch, S, dv), dtype)
        return q, k.astype(dtype), v, block

    return make


def _large_scores(make, factor=400.0):
    """``make``'s arguments with q multiplied by ``factor``: scores near 1000 and beyond, where exp() without the
    running maximum overflows."""

    def make_large(rng):
        q, *rest = make(rng)
        return ((q * factor).astype(q.dtype), *rest)

    return make_large


def within_value_range() -> Invariant:
    """Each output entry is a weighted average of its column of v: it lies between that column's min and max."""

    def violation(outputs, args, tol):
        out, v = outputs[0], np.asarray(args[2], dtype=np.float64)
        low, high = v.min(axis=-2, keepdims=True), v.max(axis=-2, keepdims=True)  # (..., 1, dv)
        slack = tol["atol"] * 10 + tol["rtol"] * np.abs(v).max()
        bad = (out < low - slack) | (out > high + slack)
        if bool(np.any(bad)):
            first = np.argwhere(bad)[0]
            value = format_number(out[tuple(first)])
            return f"entry {format_index(first)} is {value}, outside the range of its column of v"
        return None

    return Invariant("each output is an average of the values: between the column's min and max", violation)


TILED = Exercise(
    name="tiled_attention",
    function="tiled_attention",
    params=("q", "k", "v", "block"),
    lesson=LESSON,
    reference=lambda q, k, v, block: reference_tiled(q, k, v, block_size=block),
    cases=(
        Case(
            "partial_last_tile",
            "q: float32 (5, 4), k: (11, 4), v: (11, 3), block = 4: tiles of 4, 4 and 3 keys",
            _qkv_block((), 5, 11, 4, 3, 4),
            seed=311,
            points=2.0,
        ),
        Case(
            "batched_heads",
            "q: float32 (2, 3, 7, 6), k: (2, 3, 9, 6), v: (2, 3, 9, 5), block = 3",
            _qkv_block((2, 3), 7, 9, 6, 5, 3),
            seed=312,
        ),
        Case(
            "one_key_per_tile",
            "q: float64 (4, 3), k: (6, 3), v: (6, 2), block = 1",
            _qkv_block((), 4, 6, 3, 2, 1, np.float64),
            seed=313,
        ),
        Case(
            "block_larger_than_keys",
            "q: float32 (8, 5), k: (6, 5), v: (6, 7), block = 16: a single, short tile",
            _qkv_block((), 8, 6, 5, 7, 16),
            seed=314,
        ),
    ),
    hidden={
        "partial_last_tile": (
            Case(
                "one_query",
                "q: float32 (1, 4), k: (10, 4), v: (10, 3), block = 4: a single query",
                _qkv_block((), 1, 10, 4, 3, 4),
                seed=3061,
            ),
            Case(
                "block_equal_to_keys",
                "q: float32 (4, 3), k: (6, 3), v: (6, 5), block = 6: exactly one full tile",
                _qkv_block((), 4, 6, 3, 5, 6),
                seed=3062,
            ),
            Case(
                "large_scores",
                "q: float64 (5, 4) times 400, k: (9, 4), v: (9, 3), block = 4: scores up to about 1000, where exp() "
                "without the running maximum overflows",
                _large_scores(_qkv_block((), 5, 9, 4, 3, 4, np.float64)),
                seed=3063,
            ),
        ),
    },
    invariants=(within_value_range(),),
    mistakes=(
        Mistake(
            "no scaling",
            "Scale each tile of scores by 1 / sqrt(d), d = q.shape[-1], as dense attention does.",
            lambda q, k, v, block: _tiled(q, k, v, block, scale=False),
        ),
        Mistake(
            "accumulator not rescaled",
            "When a later tile raises the running maximum, multiply the accumulated output by exp(m - m_new) "
            "(and the running sum too) before adding the new tile.",
            lambda q, k, v, block: _tiled(q, k, v, block, rescale_acc=False),
        ),
        Mistake(
            "last partial tile dropped",
            "S need not be a multiple of block: loop over range(0, S, block); the slice k[..., start:start + block, "
            ":] of the last tile is simply shorter.",
            lambda q, k, v, block: _tiled(q, k, v, block, floor_tiles=True),
        ),
    ),
    hints={
        "shape": "The output has one row per query and one column per value feature: (..., L, dv).",
        "dtype": "Keep q's dtype: float32 in, float32 out (math.sqrt(d), not np.sqrt(d); or .astype(q.dtype) at "
        "the end).",
        "nonfinite": "Start with m = -inf, l = 0, acc = 0 and divide acc by l only at the end, after the last tile.",
    },
)


# --------------------------------------------------------------------------- the causal extension


def _causal_reference(q, k, v, block):
    return reference_tiled(q, k, v, is_causal=True, block_size=block, return_lse=True)


def _causal_dense(q, k, v, block, *, allowed=None, scale=True, lse_kind="full"):
    """Dense causal attention and its lse in float64, with switches for the classic mistakes."""
    dtype = q.dtype
    q, k, v = (np.asarray(x, dtype=np.float64) for x in (q, k, v))
    n = q.shape[-2]
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    allowed = (j <= i) if allowed is None else allowed(i, j)
    scores = q @ np.swapaxes(k, -1, -2) / (math.sqrt(q.shape[-1]) if scale else 1.0)  # (..., N, N)
    scores = np.where(allowed, scores, -np.inf)
    m = scores.max(axis=-1, keepdims=True)
    p = np.exp(scores - m)
    l = p.sum(axis=-1, keepdims=True)
    out = (p / l) @ v
    lse = {"full": m + np.log(l), "log_l": np.log(l), "max": m}[lse_kind][..., 0]
    return out.astype(dtype), lse.astype(dtype)


def _causal_case(batch, n, d, dv, block, dtype=np.float32):
    def make(rng):
        q = normal_array(rng, (*batch, n, d), dtype)
        k = normal_array(rng, (*batch, n, d), dtype)
        v = normal_array(rng, (*batch, n, dv), dtype)
        return q, k, v, block

    return make


CAUSAL_TILED = Exercise(
    name="causal_tiled_attention",
    function="causal_tiled_attention",
    params=("q", "k", "v", "block"),
    lesson=LESSON,
    reference=_causal_reference,
    outputs=("out", "lse"),
    cases=(
        Case(
            "partial_last_tile",
            "q, k: float32 (11, 4), v: (11, 6), block = 4: the last tile holds 3 positions",
            _causal_case((), 11, 4, 6, 4),
            seed=1331,
            points=2.0,
        ),
        Case(
            "batched_heads",
            "q, k: float32 (2, 3, 9, 5), v: (2, 3, 9, 2), block = 3",
            _causal_case((2, 3), 9, 5, 2, 3),
            seed=1332,
        ),
        Case(
            "block_of_one",
            "q, k: float64 (7, 3), v: (7, 8), block = 1: every tile a single pair",
            _causal_case((), 7, 3, 8, 1, np.float64),
            seed=1333,
        ),
        Case(
            "one_big_tile",
            "q, k: float32 (6, 2), v: (6, 5), block = 10: one tile, larger than the sequence",
            _causal_case((), 6, 2, 5, 10),
            seed=1334,
        ),
    ),
    hidden={
        "partial_last_tile": (
            Case(
                "one_position",
                "q, k: float32 (1, 4), v: (1, 6), block = 4: a single position, which sees only itself",
                _causal_case((), 1, 4, 6, 4),
                seed=3064,
            ),
            Case(
                "block_equal_to_length",
                "q, k: float32 (8, 3), v: (8, 5), block = 8: exactly one full tile, on the diagonal",
                _causal_case((), 8, 3, 5, 8),
                seed=3065,
            ),
        ),
    },
    mistakes=(
        Mistake(
            "diagonal tiles not masked",
            "Skipping the tiles above the diagonal is not enough: a tile ON the diagonal holds pairs with j > i too. "
            "Inside it, set the scores of the keys after each query to -inf before the update.",
            lambda q, k, v, b: _causal_dense(q, k, v, b, allowed=lambda i, j: j // b <= i // b),
        ),
        Mistake(
            "not causal",
            "Query i may read keys j <= i only: visit the key tiles up to and including the query tile's own, and "
            "mask the pairs j > i inside it.",
            lambda q, k, v, b: _causal_dense(q, k, v, b, allowed=lambda i, j: np.ones((i.size, j.size), dtype=bool)),
        ),
        Mistake(
            "lse without the maximum",
            "The running sum l is taken relative to the running maximum m: the row's log-sum-exp is m + log(l), not "
            "log(l).",
            lambda q, k, v, b: _causal_dense(q, k, v, b, lse_kind="log_l"),
        ),
        Mistake(
            "lse is the maximum",
            "m is only the largest score of the row; the log-sum-exp adds log(l), the log of the sum of "
            "exp(score - m): lse = m + log(l).",
            lambda q, k, v, b: _causal_dense(q, k, v, b, lse_kind="max"),
        ),
        Mistake(
            "no 1/sqrt(d) scale",
            "Scale the scores by 1 / sqrt(d) before the online softmax; the lse is that of the scaled scores.",
            lambda q, k, v, b: _causal_dense(q, k, v, b, scale=False),
        ),
    ),
    hints={
        "type": "Return the tuple (out, lse): out (..., N, dv) and lse (..., N), both in q's dtype.",
        "shape": "out is (..., N, dv); lse has one number per query row, (..., N): drop the kept axis of m and l.",
        "dtype": "Keep q's dtype for both outputs: float32 in, float32 out.",
        "values": "For query tile r (rows r * block .. ), visit the key tiles c = 0 .. r only, and in tile c = r "
        "mask the pairs whose key comes after the query. Every row has at least its own key, so m is finite at the "
        "end; the output is acc / l and lse = m + log(l).",
    },
)


def _causal_tiles(N, block):
    return np.asarray(float(masks.block_layout(masks.causal(), block, N, N).sum()), dtype=np.float64)


def _tile_count(N, block, *, rounding="ceil", diagonal=True, half_square=False):
    tiles = -(-N // block) if rounding == "ceil" else N // block
    if half_square:
        return np.asarray(tiles * tiles / 2, dtype=np.float64)
    return np.asarray(float(tiles * (tiles + 1) // 2 if diagonal else tiles * (tiles - 1) // 2), dtype=np.float64)


CAUSAL_TILES = Exercise(
    name="causal_tiles",
    function="causal_tiles",
    params=("N", "block"),
    lesson=LESSON,
    reference=_causal_tiles,
    cases=(
        Case(
            "small",
            "N = 12, block = 4",
            lambda rng: (12, 4),
            seed=1341,
            secret=with_unit(range(2, 7), lambda rng, block: (multiple(rng, block, 2, 5), block)),
        ),
        Case(
            "partial_tile",
            "N = 1000, block = 64: the last tile is partial",
            lambda rng: (1000, 64),
            seed=1342,
            secret=with_unit((32, 64, 128), lambda rng, block: (partial(rng, block, 8, 20), block)),
        ),
        Case(
            "long_sequence",
            "N = 131072, block = 128",
            lambda rng: (131_072, 128),
            seed=1343,
            secret=with_unit((64, 128, 256), lambda rng, block: (multiple(rng, block, 600, 1024), block)),
            points=2.0,
        ),
    ),
    mistakes=(
        Mistake(
            "partial tile dropped",
            "When block does not divide N the last tile is shorter but still computed: T = ceil(N / block), "
            "-(-N // block) in integers.",
            lambda N, b: _tile_count(N, b, rounding="floor"),
        ),
        Mistake(
            "diagonal tiles left out",
            "The tiles on the diagonal are computed too (each query reads its own key): T (T + 1) / 2, not "
            "T (T - 1) / 2.",
            lambda N, b: _tile_count(N, b, diagonal=False),
        ),
        Mistake(
            "half of the square",
            "Half of T * T cuts the diagonal tiles in two; a tile is either visited or not: the lower triangle with "
            "its diagonal has T (T + 1) / 2 tiles.",
            lambda N, b: _tile_count(N, b, half_square=True),
        ),
    ),
    hints={
        "type": "Return a 0-d NumPy float64 array: np.asarray(float(count), dtype=np.float64).",
        "shape": "Return a single number as a 0-d array: np.asarray(float(count), dtype=np.float64).",
        "values": "Number the tiles of queries r and of keys c from 0 to T - 1; a tile is visited when it holds a "
        "pair j <= i. Count the tiles of row r, then sum over r.",
    },
)

EXERCISES = (STEP, TILED, CAUSAL_TILED, CAUSAL_TILES)
