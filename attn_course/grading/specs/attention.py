"""Exercises of lesson 03, scaled dot-product attention: ``solutions/03_scaled_dot_product_attention.ipynb``.

* ``attention_scores(q, k)``: ``q k^T / sqrt(d)``, shape ``(..., L, S)``;
* ``scaled_dot_product_attention(q, k, v, mask=None)``: returns
  ``(output, weights)``, ``(..., L, dv)`` and ``(..., L, S)``; the boolean mask
  (True = may attend) is applied to the scores before the softmax, and a query
  that may attend to nothing gets zero weights and a zero output;
* ``attention_shapes(q_shape, k_shape, v_shape)`` (predict, then verify): the
  shapes of the weights and of the output, given the shapes of the inputs as
  integer arrays. The leading axes broadcast against each other, as in any
  batched matrix product: ``(*batch, L, S)`` and ``(*batch, L, dv)`` with
  ``batch = broadcast(q_shape[:-2], k_shape[:-2], v_shape[:-2])``.

Inputs use ``L=3, S=5, d=4, dv=6`` (and other distinct sizes), so a swapped
axis changes the shape and cannot pass. The reference is
``attn_course.scaled_dot_product_attention``.
"""

from __future__ import annotations

import math

import numpy as np

from ...attention import scaled_dot_product_attention as reference_attention
from ...softmax import softmax as reference_softmax
from ..judge import Case, Exercise, Mistake, rows_sum_to_one, within_zero_and_one, zero_where_masked
from .inputs import keep_mask, normal_array
from .secret_inputs import attention_shapes_case

__all__ = ["EXERCISES"]

LESSON = "03_scaled_dot_product_attention"


def _qk(L, S, d, batch=(), dtype=np.float32):
    return lambda rng: (normal_array(rng, (*batch, L, d), dtype), normal_array(rng, (*batch, S, d), dtype))


def _unscaled(q, k):
    return q @ np.swapaxes(k, -1, -2)


SCORES = Exercise(
    name="attention_scores",
    function="attention_scores",
    params=("q", "k"),
    lesson=LESSON,
    reference=lambda q, k: (q @ np.swapaxes(k, -1, -2)) * (1.0 / math.sqrt(q.shape[-1])),
    cases=(
        Case("single", "q: float32 (3, 4), k: float32 (5, 4)", _qk(3, 5, 4), seed=31),
        Case("batched", "q: float32 (2, 3, 4), k: float32 (2, 5, 4)", _qk(3, 5, 4, batch=(2,)), seed=32),
        Case("wide_float64", "q: float64 (3, 16), k: float64 (5, 16)", _qk(3, 5, 16, dtype=np.float64), seed=33),
    ),
    # edge cases a learner never sees (the grader runs them after the public case of the same name passed)
    hidden={
        "single": (
            Case("one_key", "q: float32 (4, 3), k: float32 (1, 3): a single key", _qk(4, 1, 3), seed=3010),
            Case("one_feature", "q: float32 (3, 1), k: float32 (5, 1): d = 1", _qk(3, 5, 1), seed=3011),
        ),
        "batched": (
            Case(
                "two_batch_axes",
                "q: float32 (2, 3, 4, 5), k: float32 (2, 3, 6, 5): two leading batch axes",
                _qk(4, 6, 5, batch=(2, 3)),
                seed=3012,
            ),
        ),
    },
    mistakes=(
        Mistake(
            "no scaling",
            "Divide the dot products by sqrt(d), d = q.shape[-1]: without it their spread grows with d and the "
            "softmax saturates: one key takes nearly all the weight and the gradients vanish.",
            _unscaled,
        ),
        Mistake(
            "divided by d",
            "Scale by 1 / sqrt(d), not 1 / d: the standard deviation of q . k grows like sqrt(d).",
            lambda q, k: _unscaled(q, k) / q.shape[-1],
        ),
        Mistake(
            "scaled by the number of keys",
            "d is the feature size q.shape[-1], not the number of keys k.shape[-2].",
            lambda q, k: _unscaled(q, k) / math.sqrt(k.shape[-2]),
        ),
        Mistake(
            "keys times queries",
            "The scores are q @ k^T, shape (..., L, S): one row per query. k @ q^T gives (..., S, L).",
            lambda q, k: (k @ np.swapaxes(q, -1, -2)) / math.sqrt(q.shape[-1]),
        ),
    ),
    hints={
        "raised": "For batched inputs transpose only the last two axes: np.swapaxes(k, -1, -2) "
        "(k.T reverses every axis, batch included).",
        "shape": "q @ k^T has shape (..., L, S): L queries (q.shape[-2]) by S keys (k.shape[-2]).",
    },
)


# --------------------------------------------------------------------------- attention


def _attention_case(L, S, d, dv, batch=(), mask_shape=None, empty_rows=(), dtype=np.float32):
    def make(rng):
        q = normal_array(rng, (*batch, L, d), dtype)
        k = normal_array(rng, (*batch, S, d), dtype)
        v = normal_array(rng, (*batch, S, dv), dtype)
        mask = None if mask_shape is None else keep_mask(rng, mask_shape, empty_rows=empty_rows)
        return q, k, v, mask

    return make


def _with_weights(weights, v, dtype):
    return (weights @ v).astype(dtype), weights.astype(dtype)


def wrong_attention(score_scale=True, mask_after=False, invert=False, axis=-1, fill=None, nan_rows=False):
    """A wrong attention: ``(q, k, v, mask) -> (output, weights)`` with one classic mistake switched on."""

    def attention(q, k, v, mask=None):
        scores = _unscaled(q, k)
        if score_scale:
            scores = scores / math.sqrt(q.shape[-1])
        if mask is not None and invert:
            mask = ~mask
        if mask is None:
            weights = reference_softmax(scores, axis=axis)
        elif mask_after:
            weights = reference_softmax(scores, axis=axis) * mask
        elif fill is not None:
            weights = reference_softmax(np.where(mask, scores, fill).astype(scores.dtype), axis=axis)
        elif nan_rows:
            filled = np.where(mask, scores, -np.inf)
            exps = np.exp(filled - filled.max(axis=-1, keepdims=True))
            weights = exps / exps.sum(axis=-1, keepdims=True)
        else:
            weights = reference_softmax(scores, axis=axis, mask=mask)
        return _with_weights(weights, v, q.dtype)

    return attention


ATTENTION = Exercise(
    name="scaled_dot_product_attention",
    function="scaled_dot_product_attention",
    params=("q", "k", "v", "mask"),
    lesson=LESSON,
    reference=lambda q, k, v, mask: reference_attention(q, k, v, mask, return_weights=True),
    outputs=("output", "weights"),
    cases=(
        Case(
            "no_mask",
            "q: float32 (3, 4), k: (5, 4), v: (5, 6), mask None",
            _attention_case(3, 5, 4, 6),
            seed=34,
            points=2.0,
        ),
        Case(
            "batched_with_mask",
            "q: float32 (2, 3, 4), k: (2, 5, 4), v: (2, 5, 6), mask: bool (3, 5)",
            _attention_case(3, 5, 4, 6, batch=(2,), mask_shape=(3, 5)),
            seed=35,
            points=2.0,
        ),
        Case(
            "query_fully_masked",
            "q: float32 (3, 4), k: (5, 4), v: (5, 6), mask: bool (3, 5) whose row 1 allows nothing",
            _attention_case(3, 5, 4, 6, mask_shape=(3, 5), empty_rows=(1,)),
            seed=36,
        ),
        Case(
            "float64",
            "q: float64 (4, 8), k: (7, 8), v: (7, 3), mask: bool (4, 7)",
            _attention_case(4, 7, 8, 3, mask_shape=(4, 7), dtype=np.float64),
            seed=37,
        ),
    ),
    hidden={
        "batched_with_mask": (
            Case(
                "two_batch_axes_with_mask",
                "q: float32 (2, 3, 4, 5), k: (2, 3, 7, 5), v: (2, 3, 7, 6), mask: bool (4, 7) shared by the batch",
                _attention_case(4, 7, 5, 6, batch=(2, 3), mask_shape=(4, 7)),
                seed=3013,
            ),
        ),
        "no_mask": (
            Case(
                "one_query",
                "q: float32 (1, 4), k: (9, 4), v: (9, 2), mask None",
                _attention_case(1, 9, 4, 2),
                seed=2006,
            ),
            Case(
                "one_key",
                "q: float32 (3, 5), k: (1, 5), v: (1, 4), mask None: every weight is 1",
                _attention_case(3, 1, 5, 4),
                seed=2007,
            ),
        ),
    },
    invariants=(
        zero_where_masked(1, 3),
        within_zero_and_one(1),
        rows_sum_to_one(1, mask_arg=3),
    ),
    mistakes=(
        Mistake(
            "no scaling",
            "Divide the scores by sqrt(d) (d = q.shape[-1]) before the softmax.",
            wrong_attention(score_scale=False),
        ),
        Mistake(
            "mask applied after the softmax",
            "Apply the mask to the scores, before the softmax (masked scores become -inf): zeroing weights "
            "afterwards leaves rows that no longer sum to 1.",
            wrong_attention(mask_after=True),
        ),
        Mistake(
            "mask inverted",
            "The mask is True where a query may attend to a key, False where it may not.",
            wrong_attention(invert=True),
        ),
        Mistake(
            "softmax over the queries",
            "The softmax runs over the keys, the last axis of the scores (..., L, S): each query's weights sum to 1.",
            wrong_attention(axis=-2),
        ),
        Mistake(
            "large negative number instead of -inf",
            "With a large negative number instead of -inf, a query that may attend to nothing spreads its weight "
            "evenly. Such a query must get zero weights and a zero output.",
            wrong_attention(fill=-1e9),
        ),
        Mistake(
            "NaN for a query that may attend to nothing",
            "For a query whose mask allows nothing every score is -inf, and the softmax computes 0 / 0 = NaN. "
            "Give such a query zero weights (and so a zero output row).",
            wrong_attention(nan_rows=True),
        ),
    ),
    hints={
        "type": "Return both results as a tuple: return output, weights.",
        "values": "Go step by step: scores = q @ k^T / sqrt(d); masked scores -> -inf; softmax over the keys "
        "(last axis); output = weights @ v. Compare each step with attention_scores and masked_softmax.",
        "raised": "For batched inputs transpose only the last two axes of k: np.swapaxes(k, -1, -2).",
    },
)

# --------------------------------------------------------------------------- predicting the shapes


def _shapes_by_running(q_shape, k_shape, v_shape):
    """``(weights shape, output shape)`` as int64 arrays, read off the package's attention run on zeros."""
    q, k, v = (np.zeros(tuple(int(n) for n in shape), dtype=np.float32) for shape in (q_shape, k_shape, v_shape))
    output, weights = reference_attention(q, k, v, return_weights=True)
    return np.asarray(weights.shape, dtype=np.int64), np.asarray(output.shape, dtype=np.int64)


def _shapes_variant(batch_from="all", value_width="dv", keys_first=False):
    """A wrong prediction with one classic mistake switched on."""

    def predict(q_shape, k_shape, v_shape):
        q_shape, k_shape, v_shape = (tuple(int(n) for n in shape) for shape in (q_shape, k_shape, v_shape))
        batch = q_shape[:-2] if batch_from == "q" else np.broadcast_shapes(q_shape[:-2], k_shape[:-2], v_shape[:-2])
        L, S = q_shape[-2], k_shape[-2]
        width = v_shape[-1] if value_width == "dv" else q_shape[-1]
        weights = (*batch, S, L) if keys_first else (*batch, L, S)
        return np.asarray(weights, dtype=np.int64), np.asarray((*batch, L, width), dtype=np.int64)

    return predict


def _shape_args(q_shape, k_shape, v_shape):
    return lambda rng: tuple(np.asarray(shape, dtype=np.int64) for shape in (q_shape, k_shape, v_shape))


SHAPES = Exercise(
    name="attention_shapes",
    function="attention_shapes",
    params=("q_shape", "k_shape", "v_shape"),
    lesson=LESSON,
    reference=_shapes_by_running,
    outputs=("weights_shape", "output_shape"),
    cases=(
        Case(
            "plain",
            "q (5, 4), k (7, 4), v (7, 6)",
            _shape_args((5, 4), (7, 4), (7, 6)),
            seed=141,
            secret=attention_shapes_case("plain"),
        ),
        Case(
            "batched",
            "q (8, 3, 4), k (8, 9, 4), v (8, 9, 2): one batch axis",
            _shape_args((8, 3, 4), (8, 9, 4), (8, 9, 2)),
            seed=142,
            secret=attention_shapes_case("batched"),
        ),
        Case(
            "broadcast_batch",
            "q (2, 1, 5, 4), k (3, 7, 4), v (1, 7, 6): the leading axes broadcast",
            _shape_args((2, 1, 5, 4), (3, 7, 4), (1, 7, 6)),
            seed=143,
            secret=attention_shapes_case("broadcast"),
            points=2.0,
        ),
    ),
    mistakes=(
        Mistake(
            "batch taken from q only",
            "The leading axes of q, k and v broadcast against each other, as in any batched matrix product: "
            "(2, 1) with (3,) gives (2, 3). np.broadcast_shapes does it for you.",
            _shapes_variant(batch_from="q"),
        ),
        Mistake(
            "output as wide as the queries",
            "The output is a weighted sum of VALUE rows: its last axis is dv = v_shape[-1], which need not equal "
            "the width d of the queries and keys.",
            _shapes_variant(value_width="d"),
        ),
        Mistake(
            "keys before queries",
            "The weights have one row per query and one column per key: (..., L, S), with L = q_shape[-2] and "
            "S = k_shape[-2].",
            _shapes_variant(keys_first=True),
        ),
    ),
    hints={
        "type": "Return both shapes as a tuple of integer arrays: return np.array(weights_shape), "
        "np.array(output_shape).",
        "dtype": "Return integer arrays: np.array of Python ints (or of a shape tuple) gives int64.",
        "shape": "Each result holds one number per axis: as many numbers as the broadcast batch axes, plus two.",
    },
)

EXERCISES = (SCORES, ATTENTION, SHAPES)
