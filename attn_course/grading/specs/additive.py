"""Exercises of lesson 04, self-attention vs traditional attention:
``solutions/04_self_attention_vs_traditional_attention.ipynb``.

* ``additive_scores(query, keys, W_q, W_k, w)``: Bahdanau's score of one
  decoder state ``(d_q,)`` against every encoder state ``(S, d_k)``,
  ``w . tanh(query W_q + k_j W_k)``, shape ``(S,)``;
* ``additive_attention(query, keys, values, W_q, W_k, w)``: the whole additive
  attention for ``L`` queries at once, returning ``(output, weights)``,
  ``(..., L, dv)`` and ``(..., L, S)``;
* ``cross_attention(x, memory, W_q, W_k, W_v)``: scaled dot-product attention
  with queries projected from ``x (..., L, d_model)`` and keys and values from
  another sequence ``memory (..., S, d_model)``; ``L != S``;
* ``shuffled_cross_attention(output, weights, query_order, memory_order)``
  (predict, then verify): given what cross-attention returned for ``x`` and
  ``memory``, what it returns for ``x[..., query_order, :]`` and
  ``memory[..., memory_order, :]``, without running it again: the output rows
  follow the queries (``output[..., query_order, :]``) and do not care about
  the order of the memory; the weights follow both, rows by ``query_order``
  and columns by ``memory_order``.

References: ``attn_course.additive_attention`` and
``attn_course.scaled_dot_product_attention`` (the scores of the first exercise
are the plain formula: the package does not return them). All sizes differ
(``d_q=5, S=6, d_k=8, a=3``, ...), so a swapped axis or a swapped matrix fails.
"""

from __future__ import annotations

import math

import numpy as np

from ...additive import additive_attention as reference_additive
from ...attention import scaled_dot_product_attention as reference_attention
from ...softmax import softmax as reference_softmax
from ..judge import (
    Case,
    Exercise,
    Invariant,
    Mistake,
    format_index,
    format_number,
    rows_sum_to_one,
    within_zero_and_one,
)
from .inputs import normal_array

__all__ = ["EXERCISES"]

LESSON = "04_self_attention_vs_traditional_attention"


# --------------------------------------------------------------------------- additive scores


def _scores(query, keys, W_q, W_k, w, squash=np.tanh):
    """``w . squash(query W_q + keys W_k)`` for queries (..., L, d_q) or one query (d_q,): (..., L, S) or (S,)."""
    projected_q = query @ W_q  # (..., L, a) or (a,)
    projected_k = keys @ W_k  # (..., S, a)
    if query.ndim == 1:
        return squash(projected_q + projected_k) @ w  # (S,)
    return squash(projected_q[..., :, None, :] + projected_k[..., None, :, :]) @ w  # (..., L, S)


def _score_args(d_q, S, d_k, a, dtype=np.float32):
    def make(rng):
        return (
            normal_array(rng, (d_q,), dtype),
            normal_array(rng, (S, d_k), dtype),
            normal_array(rng, (d_q, a), dtype),
            normal_array(rng, (d_k, a), dtype),
            normal_array(rng, (a,), dtype),
        )

    return make


def bounded_by_w() -> Invariant:
    """Each score lies within ``+-sum(|w|)``: tanh is between -1 and 1."""

    def violation(outputs, args, tol):
        scores = outputs[0]
        bound = float(np.abs(np.asarray(args[4], dtype=np.float64)).sum())
        bad = np.abs(scores) > bound * (1 + tol["rtol"]) + tol["atol"]
        if bool(np.any(bad)):
            first = np.argwhere(bad)[0]
            value = format_number(scores[tuple(first)])
            return f"score {format_index(first)} is {value}, beyond sum(|w|) = {format_number(bound)}"
        return None

    return Invariant("every score lies within -sum(|w|) and sum(|w|) (tanh is between -1 and 1)", violation)


NO_TANH = (
    "The hidden layer goes through tanh before w reads it out: w . tanh(query W_q + k_j W_k). "
    "Without tanh the network is linear and the scores are unbounded."
)

SCORES = Exercise(
    name="additive_scores",
    function="additive_scores",
    params=("query", "keys", "W_q", "W_k", "w"),
    lesson=LESSON,
    reference=_scores,
    cases=(
        Case(
            "lesson_sizes",
            "query: float32 (5,), keys: (6, 8), W_q: (5, 3), W_k: (8, 3), w: (3,)",
            _score_args(5, 6, 8, 3),
            seed=141,
        ),
        Case(
            "wide_attention_space",
            "query: float32 (4,), keys: (7, 2), W_q: (4, 9), W_k: (2, 9), w: (9,)",
            _score_args(4, 7, 2, 9),
            seed=142,
        ),
        Case(
            "float64",
            "query: float64 (3,), keys: (4, 6), W_q: (3, 5), W_k: (6, 5), w: (5,)",
            _score_args(3, 4, 6, 5, np.float64),
            seed=143,
        ),
    ),
    # edge cases a learner never sees (the grader runs them after the public case of the same name passed)
    hidden={
        "lesson_sizes": (
            Case(
                "one_key",
                "query: float32 (4,), keys: (1, 6), W_q: (4, 3), W_k: (6, 3), w: (3,): a single encoder state",
                _score_args(4, 1, 6, 3),
                seed=3014,
            ),
        ),
    },
    invariants=(bounded_by_w(),),
    mistakes=(
        Mistake("no tanh", NO_TANH, lambda q, k, W_q, W_k, w: _scores(q, k, W_q, W_k, w, squash=lambda h: h)),
        Mistake(
            "tanh of each projection apart",
            "Add the two projections first, then apply tanh once to the sum: tanh(query W_q + k_j W_k), "
            "not tanh(query W_q) + tanh(k_j W_k).",
            lambda q, k, W_q, W_k, w: (np.tanh(q @ W_q) + np.tanh(k @ W_k)) @ w,
        ),
        Mistake(
            "weights instead of scores",
            "Return the raw scores: the softmax that turns them into weights is part of exercise 2.",
            lambda q, k, W_q, W_k, w: reference_softmax(_scores(q, k, W_q, W_k, w)),
        ),
        Mistake(
            "scaled by sqrt(a)",
            "Additive attention has no 1/sqrt(d) scaling: the small network learns the size of its scores.",
            lambda q, k, W_q, W_k, w: _scores(q, k, W_q, W_k, w) / math.sqrt(w.shape[0]),
        ),
    ),
    hints={
        "raised": "query (d_q,) goes with W_q (d_q, a), keys (S, d_k) with W_k (d_k, a); both projections end "
        "with a features, so query @ W_q (a,) adds to every row of keys @ W_k (S, a) by broadcasting.",
        "shape": "One score per key: (S,), with S = keys.shape[0].",
    },
)


# --------------------------------------------------------------------------- additive attention


def _additive_args(L, S, d_q, d_k, dv, a, batch=(), dtype=np.float32):
    def make(rng):
        return (
            normal_array(rng, (*batch, L, d_q), dtype),
            normal_array(rng, (*batch, S, d_k), dtype),
            normal_array(rng, (*batch, S, dv), dtype),
            normal_array(rng, (d_q, a), dtype),
            normal_array(rng, (d_k, a), dtype),
            normal_array(rng, (a,), dtype),
        )

    return make


def _additive_variant(squash=np.tanh, axis=-1, mix_keys=False, scale=1.0):
    """A wrong additive attention with one classic mistake switched on: ``(output, weights)``."""

    def attention(query, keys, values, W_q, W_k, w):
        scores = _scores(query, keys, W_q, W_k, w, squash=squash) * scale
        weights = reference_softmax(scores, axis=axis)
        mixed = keys if mix_keys else values
        return (weights @ mixed).astype(query.dtype), weights.astype(query.dtype)

    return attention


ADDITIVE = Exercise(
    name="additive_attention",
    function="additive_attention",
    params=("query", "keys", "values", "W_q", "W_k", "w"),
    lesson=LESSON,
    reference=lambda query, keys, values, W_q, W_k, w: reference_additive(
        query, keys, values, W_q, W_k, w, return_weights=True
    ),
    outputs=("output", "weights"),
    cases=(
        Case(
            "decoder_steps",
            "query: float32 (4, 5), keys: (6, 8), values: (6, 7), W_q: (5, 3), W_k: (8, 3), w: (3,)",
            _additive_args(4, 6, 5, 8, 7, 3),
            seed=144,
            points=2.0,
        ),
        Case(
            "batched",
            "query: float32 (2, 3, 5), keys: (2, 6, 4), values: (2, 6, 7), W_q: (5, 8), W_k: (4, 8), w: (8,)",
            _additive_args(3, 6, 5, 4, 7, 8, batch=(2,)),
            seed=145,
        ),
        Case(
            "float64",
            "query: float64 (2, 3), keys: (5, 6), values: (5, 4), W_q: (3, 7), W_k: (6, 7), w: (7,)",
            _additive_args(2, 5, 3, 6, 4, 7, dtype=np.float64),
            seed=146,
        ),
    ),
    hidden={
        "decoder_steps": (
            Case(
                "one_query",
                "query: float32 (1, 5), keys: (6, 4), values: (6, 7), W_q: (5, 3), W_k: (4, 3), w: (3,): one step",
                _additive_args(1, 6, 5, 4, 7, 3),
                seed=3015,
            ),
        ),
        "batched": (
            Case(
                "two_batch_axes",
                "query: float32 (2, 3, 4, 5), keys: (2, 3, 6, 8), values: (2, 3, 6, 7), W_q: (5, 9), W_k: (8, 9), "
                "w: (9,): two leading batch axes",
                _additive_args(4, 6, 5, 8, 7, 9, batch=(2, 3)),
                seed=3016,
            ),
        ),
    },
    invariants=(within_zero_and_one(1), rows_sum_to_one(1)),
    mistakes=(
        Mistake("no tanh", NO_TANH, _additive_variant(squash=lambda h: h)),
        Mistake(
            "softmax over the queries",
            "The softmax runs over the keys, the last axis of the scores (..., L, S): each query's weights sum to 1.",
            _additive_variant(axis=-2),
        ),
        Mistake(
            "keys mixed instead of values",
            "The output mixes the values with the weights, weights @ values (..., L, dv); the keys only serve "
            "to score.",
            _additive_variant(mix_keys=True),
        ),
        Mistake(
            "scaled scores",
            "Additive attention has no 1/sqrt(d) scaling: use the scores w . tanh(...) as they are.",
            lambda query, keys, values, W_q, W_k, w: _additive_variant(scale=1.0 / math.sqrt(w.shape[0]))(
                query, keys, values, W_q, W_k, w
            ),
        ),
    ),
    hints={
        "type": "Return both results as a tuple: return output, weights.",
        "raised": "Give the projected queries a key axis and the projected keys a query axis, "
        "q[..., :, None, :] + k[..., None, :, :], so that their sum is (..., L, S, a).",
        "shape": "The hidden layer is (..., L, S, a); reading it out with w gives the scores (..., L, S); "
        "the output is weights @ values, (..., L, dv).",
    },
)


# --------------------------------------------------------------------------- cross-attention


def _cross_args(L, S, d_model, d_k, dv, batch=(), dtype=np.float32):
    def make(rng):
        return (
            normal_array(rng, (*batch, L, d_model), dtype),
            normal_array(rng, (*batch, S, d_model), dtype),
            normal_array(rng, (d_model, d_k), dtype),
            normal_array(rng, (d_model, d_k), dtype),
            normal_array(rng, (d_model, dv), dtype),
        )

    return make


def _cross(x, memory, W_q, W_k, W_v):
    return reference_attention(x @ W_q, memory @ W_k, memory @ W_v, return_weights=True)


def _cross_variant(queries_from_memory=False, keys_from_x=False, value_matrix=None, scale="d_k"):
    """A wrong cross-attention with one classic mistake switched on: ``(output, weights)``."""

    def attention(x, memory, W_q, W_k, W_v):
        asking = memory if queries_from_memory else x
        answering = x if (queries_from_memory or keys_from_x) else memory
        q, k = asking @ W_q, answering @ W_k
        v = answering @ (W_k if value_matrix == "W_k" else W_v)
        factor = {"d_k": None, "d_model": 1.0 / math.sqrt(x.shape[-1]), "none": 1.0}[scale]
        return reference_attention(q, k, v, scale=factor, return_weights=True)

    return attention


CROSS = Exercise(
    name="cross_attention",
    function="cross_attention",
    params=("x", "memory", "W_q", "W_k", "W_v"),
    lesson=LESSON,
    reference=_cross,
    outputs=("output", "weights"),
    cases=(
        Case(
            "single",
            "x: float32 (4, 8), memory: (6, 8), W_q, W_k: (8, 5), W_v: (8, 3)",
            _cross_args(4, 6, 8, 5, 3),
            seed=147,
            points=2.0,
        ),
        Case(
            "batched",
            "x: float32 (2, 7, 6), memory: (2, 3, 6), W_q, W_k: (6, 4), W_v: (6, 5)",
            _cross_args(7, 3, 6, 4, 5, batch=(2,)),
            seed=148,
        ),
        Case(
            "float64",
            "x: float64 (3, 9), memory: (5, 9), W_q, W_k: (9, 2), W_v: (9, 4)",
            _cross_args(3, 5, 9, 2, 4, dtype=np.float64),
            seed=149,
        ),
    ),
    hidden={
        "single": (
            Case(
                "one_memory_position",
                "x: float32 (4, 6), memory: (1, 6), W_q, W_k: (6, 5), W_v: (6, 3): every weight is 1",
                _cross_args(4, 1, 6, 5, 3),
                seed=3017,
            ),
        ),
        "batched": (
            Case(
                "two_batch_axes",
                "x: float32 (2, 3, 5, 8), memory: (2, 3, 7, 8), W_q, W_k: (8, 4), W_v: (8, 6): two leading batch axes",
                _cross_args(5, 7, 8, 4, 6, batch=(2, 3)),
                seed=3018,
            ),
        ),
    },
    invariants=(within_zero_and_one(1), rows_sum_to_one(1)),
    mistakes=(
        Mistake(
            "self-attention instead",
            "Keys and values come from the other sequence, memory: k = memory @ W_k, v = memory @ W_v. "
            "Taking them from x gives self-attention, with (..., L, L) weights.",
            _cross_variant(keys_from_x=True),
        ),
        Mistake(
            "queries from the memory",
            "The queries come from x (the sequence that asks) and the keys and values from memory: the "
            "output has one row per row of x, (..., L, dv).",
            _cross_variant(queries_from_memory=True),
        ),
        Mistake(
            "values projected with W_k",
            "The values are memory @ W_v: W_k makes the keys. The output has W_v's dv features.",
            _cross_variant(value_matrix="W_k"),
        ),
        Mistake(
            "scaled by sqrt(d_model)",
            "Scale by 1/sqrt(d_k), d_k the size of the projected queries and keys (W_q.shape[1]), "
            "not the input size d_model.",
            _cross_variant(scale="d_model"),
        ),
        Mistake(
            "no scaling",
            "Divide the scores by sqrt(d_k) (d_k = W_q.shape[1]) before the softmax, as in lesson 03.",
            _cross_variant(scale="none"),
        ),
    ),
    hints={
        "type": "Return both results as a tuple: return output, weights.",
        "raised": "For batched inputs transpose only the last two axes of the keys: np.swapaxes(k, -1, -2).",
        "shape": "q = x @ W_q is (..., L, d_k), k = memory @ W_k is (..., S, d_k), v = memory @ W_v is "
        "(..., S, dv): the weights are (..., L, S) and the output (..., L, dv).",
    },
)

# --------------------------------------------------------------------------- what shuffling does to cross-attention


def _shuffled(output, weights, query_order, memory_order, *, inverse=False, columns=True, rows=True):
    """What cross-attention returns for shuffled inputs (or a classic wrong prediction of it)."""
    if inverse:
        query_order, memory_order = np.argsort(query_order), np.argsort(memory_order)
    new_weights = weights[..., query_order, :] if rows else weights  # (..., L, S): rows follow the queries
    if columns:
        new_weights = new_weights[..., memory_order]  # columns follow the keys
    return output[..., query_order, :], new_weights  # the output rows follow the queries only


def _shuffle_args(L, S, d_model, d_k, dv, query_order, memory_order, batch=(), dtype=np.float32):
    """A real cross-attention result (from the package) and the two orders."""
    make_inputs = _cross_args(L, S, d_model, d_k, dv, batch, dtype)

    def make(rng):
        output, weights = _cross(*make_inputs(rng))
        orders = (np.asarray(query_order, dtype=np.int64), np.asarray(memory_order, dtype=np.int64))
        return (np.asarray(output), np.asarray(weights), *orders)

    return make


SHUFFLED = Exercise(
    name="shuffled_cross_attention",
    function="shuffled_cross_attention",
    params=("output", "weights", "query_order", "memory_order"),
    lesson=LESSON,
    reference=_shuffled,
    outputs=("output", "weights"),
    cases=(
        Case(
            "one_sentence",
            "output: float32 (5, 3), weights: (5, 7), query_order [2, 0, 4, 1, 3], memory_order [3, 6, 0, 5, 1, 2, 4]",
            _shuffle_args(5, 7, 8, 4, 3, [2, 0, 4, 1, 3], [3, 6, 0, 5, 1, 2, 4]),
            seed=151,
        ),
        Case(
            "batched",
            "output: float32 (2, 4, 5), weights: (2, 4, 6), query_order [1, 3, 0, 2], memory_order [5, 2, 4, 0, 3, 1]",
            _shuffle_args(4, 6, 7, 3, 5, [1, 3, 0, 2], [5, 2, 4, 0, 3, 1], batch=(2,)),
            seed=152,
            points=2.0,
        ),
        Case(
            "memory_only_float64",
            "output: float64 (6, 2), weights: (6, 3), query_order [0 .. 5] (unchanged), memory_order [1, 2, 0]",
            _shuffle_args(6, 3, 5, 4, 2, list(range(6)), [1, 2, 0], dtype=np.float64),
            seed=153,
        ),
    ),
    hidden={
        "batched": (
            Case(
                "two_batch_axes",
                "output: float32 (3, 2, 4, 6), weights: (3, 2, 4, 5), query_order [3, 1, 0, 2], "
                "memory_order [4, 0, 3, 1, 2]: two leading batch axes",
                _shuffle_args(4, 5, 7, 3, 6, [3, 1, 0, 2], [4, 0, 3, 1, 2], batch=(3, 2)),
                seed=3019,
            ),
        ),
    },
    invariants=(rows_sum_to_one(output=1),),
    mistakes=(
        Mistake(
            "columns of the weights left in place",
            "Column j of the weights belongs to key j. Shuffling the memory moves the keys, so the columns move "
            "with them: weights[..., memory_order] after the rows. The output does not change: a weighted sum "
            "does not care in which order its terms come.",
            lambda output, weights, qo, mo: _shuffled(output, weights, qo, mo, columns=False),
        ),
        Mistake(
            "rows of the weights left in place",
            "Row i of the weights belongs to query i: when the queries are reordered, the rows (of the weights "
            "and of the output) move with them.",
            lambda output, weights, qo, mo: _shuffled(output, weights, qo, mo, rows=False),
        ),
        Mistake(
            "inverse orders",
            "x[query_order] puts old row query_order[i] at new position i, so new row i is old row query_order[i]: "
            "index with the order itself (output[..., query_order, :]), not with its inverse np.argsort(order).",
            lambda output, weights, qo, mo: _shuffled(output, weights, qo, mo, inverse=True),
        ),
    ),
    hints={
        "type": "Return both results as a tuple: return output, weights.",
        "shape": "Shuffling changes no size: the output stays (..., L, dv) and the weights (..., L, S).",
        "values": "Ask for one query i: which keys can it see, and does its weighted sum of values change when "
        "the same (key, value) pairs come in another order? Then: where does row i go when the queries move?",
    },
)

EXERCISES = (SCORES, ADDITIVE, CROSS, SHUFFLED)
