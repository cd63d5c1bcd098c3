"""Exercises of lesson 13, memory-efficient exact attention: ``solutions/13_memory_efficient_exact_attention.ipynb``.

* ``online_softmax_step(m, l, acc, scores, values)``: one step of the online
  softmax. The running maximum ``m (L, 1)``, running sum ``l (L, 1)`` and
  running (unnormalised) output ``acc (L, dv)`` absorb one tile of scores
  ``(L, C)`` and its values ``(C, dv)``; returns ``(m_new, l_new, acc_new)``;
* ``tiled_attention(q, k, v, block)``: scaled dot-product attention computed
  one tile of ``block`` keys at a time, never building the ``(L, S)`` scores.

References: the online-softmax update written out in float64 (the package has
no public single step), and ``attn_course.tiled_attention``, which agrees with
dense attention up to rounding.
"""

from __future__ import annotations

import math

import numpy as np

from ...tiled import tiled_attention as reference_tiled
from ..judge import Case, Exercise, Invariant, Mistake, format_index, format_number
from .inputs import normal_array

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
        ),
    ),
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

EXERCISES = (STEP, TILED)
