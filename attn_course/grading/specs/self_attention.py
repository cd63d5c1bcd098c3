"""Exercises of lesson 05, the self-attention layer: ``solutions/05_the_self_attention_layer.ipynb``.

* ``self_attention_scores(x, W_q, W_k)``: the scaled scores of a sequence
  against itself through two learned projections,
  ``(x W_q)(x W_k)^T / sqrt(d_k)``, shape ``(..., L, L)``;
* ``self_attention(x, W_q, W_k, W_v)``: the layer's forward pass, returning
  ``(output, weights)``, ``(..., L, dv)`` and ``(..., L, L)``;
* ``sharpening_factor(x, W_q, W_k, target)`` (an experiment with an answer):
  the factor ``c`` by which ``W_q`` must grow (``W_k`` unchanged) until the
  largest weight of each query, averaged over all queries, reaches ``target``.
  Scaling ``W_q`` by ``c`` scales every score by ``c``, and each query's top
  weight ``1 / sum_j exp(c (s_j - s_max))`` grows with ``c``, so one factor
  does it; the reference finds it by bisection in float64. Graded to a
  relative precision of 1e-4 (the task asks for five significant digits).

The reference of the layer is ``attn_course.scaled_dot_product_attention`` on
the three projections (that is how the lesson checks the torch layer); the
scores are the plain formula. Sizes differ from each other (``L=5,
d_model=8, d_k=3, dv=6``, ...), so using the wrong matrix or the wrong axis
shows as a wrong shape or wrong values.
"""

from __future__ import annotations

import math

import numpy as np

from ...attention import scaled_dot_product_attention as reference_attention
from ...softmax import softmax as reference_softmax
from ..judge import Case, Exercise, Mistake, rows_sum_to_one, within_zero_and_one
from .inputs import normal_array

__all__ = ["EXERCISES"]

LESSON = "05_the_self_attention_layer"


def _swap(x):
    return np.swapaxes(x, -1, -2)


def _layer_args(L, d_model, d_k, dv=None, batch=(), dtype=np.float32):
    """x (..., L, d_model), W_q and W_k (d_model, d_k), and W_v (d_model, dv) when ``dv`` is given."""

    def make(rng):
        x = normal_array(rng, (*batch, L, d_model), dtype)
        scale = 1.0 / math.sqrt(d_model)  # the lesson's initial scale: scores of order 1
        W_q = (normal_array(rng, (d_model, d_k), np.float64) * scale).astype(dtype)
        W_k = (normal_array(rng, (d_model, d_k), np.float64) * scale).astype(dtype)
        if dv is None:
            return x, W_q, W_k
        W_v = (normal_array(rng, (d_model, dv), np.float64) * scale).astype(dtype)
        return x, W_q, W_k, W_v

    return make


def _scores(x, W_q, W_k, query_matrix=None, key_matrix=None, scale="d_k", transposed=False):
    """The scores, or a classic wrong version of them."""
    q = x if query_matrix == "none" else x @ W_q
    k = x if key_matrix == "none" else x @ (W_q if key_matrix == "W_q" else W_k)
    scores = k @ _swap(q) if transposed else q @ _swap(k)
    factor = {"d_k": 1.0 / math.sqrt(q.shape[-1]), "d_model": 1.0 / math.sqrt(x.shape[-1]), "none": 1.0}[scale]
    return scores * factor


SCALE_HINT = (
    "Scale by 1/sqrt(d_k), where d_k = W_q.shape[1] is the size of the projected queries and keys, "
    "not the embedding size d_model."
)

SCORES = Exercise(
    name="self_attention_scores",
    function="self_attention_scores",
    params=("x", "W_q", "W_k"),
    lesson=LESSON,
    reference=_scores,
    cases=(
        Case("single", "x: float32 (5, 8), W_q, W_k: (8, 3)", _layer_args(5, 8, 3), seed=151),
        Case("batched", "x: float32 (2, 6, 4), W_q, W_k: (4, 7)", _layer_args(6, 4, 7, batch=(2,)), seed=152),
        Case("float64", "x: float64 (7, 6), W_q, W_k: (6, 2)", _layer_args(7, 6, 2, dtype=np.float64), seed=153),
    ),
    # edge cases a learner never sees (the grader runs them after the public case of the same name passed)
    hidden={
        "single": (
            Case(
                "one_token",
                "x: float32 (1, 6), W_q, W_k: (6, 4): a sequence of one token",
                _layer_args(1, 6, 4),
                seed=3020,
            ),
            Case("one_feature", "x: float32 (5, 7), W_q, W_k: (7, 1): d_k = 1", _layer_args(5, 7, 1), seed=3021),
        ),
        "batched": (
            Case(
                "two_batch_axes",
                "x: float32 (2, 3, 4, 5), W_q, W_k: (5, 6): two leading batch axes",
                _layer_args(4, 5, 6, batch=(2, 3)),
                seed=3022,
            ),
        ),
    },
    mistakes=(
        Mistake("scaled by sqrt(d_model)", SCALE_HINT, lambda x, W_q, W_k: _scores(x, W_q, W_k, scale="d_model")),
        Mistake(
            "no scaling",
            "Divide the scores by sqrt(d_k), d_k = W_q.shape[1], as in lesson 03.",
            lambda x, W_q, W_k: _scores(x, W_q, W_k, scale="none"),
        ),
        Mistake(
            "W_q for the keys too",
            "The keys come from their own matrix, k = x @ W_k. With W_q on both sides the scores are symmetric, "
            "which two separate roles are meant to avoid: a token may look for something other than what it offers.",
            lambda x, W_q, W_k: _scores(x, W_q, W_k, key_matrix="W_q"),
        ),
        Mistake(
            "no projections",
            "Project first: q = x @ W_q and k = x @ W_k. Comparing the embeddings x with themselves is the "
            "symmetric attention without learned roles: the score of i for j is the score of j for i.",
            lambda x, W_q, W_k: _scores(x, W_q, W_k, query_matrix="none", key_matrix="none", scale="d_model"),
        ),
        Mistake(
            "keys times queries",
            "Row i holds query i's scores against every key: q @ k^T. k @ q^T is its transpose.",
            lambda x, W_q, W_k: _scores(x, W_q, W_k, transposed=True),
        ),
    ),
    hints={
        "raised": "x (..., L, d_model) @ W_q (d_model, d_k) gives q (..., L, d_k); for batched inputs transpose "
        "only the last two axes of k: np.swapaxes(k, -1, -2).",
        "shape": "The scores compare every position with every position of the same sequence: (..., L, L).",
    },
)


# --------------------------------------------------------------------------- the layer


def _layer_variant(value_matrix="W_v", axis=-1, **score_options):
    """A wrong self-attention layer with one classic mistake switched on: ``(output, weights)``."""

    def layer(x, W_q, W_k, W_v):
        weights = reference_softmax(_scores(x, W_q, W_k, **score_options), axis=axis)
        values = {"W_v": lambda: x @ W_v, "W_k": lambda: x @ W_k, "none": lambda: x}[value_matrix]()
        return (weights @ values).astype(x.dtype), weights.astype(x.dtype)

    return layer


LAYER = Exercise(
    name="self_attention",
    function="self_attention",
    params=("x", "W_q", "W_k", "W_v"),
    lesson=LESSON,
    reference=lambda x, W_q, W_k, W_v: reference_attention(x @ W_q, x @ W_k, x @ W_v, return_weights=True),
    outputs=("output", "weights"),
    cases=(
        Case(
            "single",
            "x: float32 (5, 8), W_q, W_k: (8, 3), W_v: (8, 6)",
            _layer_args(5, 8, 3, 6),
            seed=154,
            points=2.0,
        ),
        Case(
            "batched",
            "x: float32 (2, 6, 4), W_q, W_k: (4, 7), W_v: (4, 3)",
            _layer_args(6, 4, 7, 3, batch=(2,)),
            seed=155,
            points=2.0,
        ),
        Case(
            "float64",
            "x: float64 (7, 6), W_q, W_k: (6, 2), W_v: (6, 5)",
            _layer_args(7, 6, 2, 5, dtype=np.float64),
            seed=156,
        ),
    ),
    hidden={
        "single": (
            Case(
                "one_token",
                "x: float32 (1, 6), W_q, W_k: (6, 4), W_v: (6, 5): a sequence of one token, its weight is 1",
                _layer_args(1, 6, 4, 5),
                seed=3023,
            ),
        ),
        "batched": (
            Case(
                "two_batch_axes",
                "x: float32 (2, 3, 4, 5), W_q, W_k: (5, 6), W_v: (5, 7): two leading batch axes",
                _layer_args(4, 5, 6, 7, batch=(2, 3)),
                seed=3024,
            ),
        ),
    },
    invariants=(within_zero_and_one(1), rows_sum_to_one(1)),
    mistakes=(
        Mistake(
            "values not projected",
            "The values are projected too, v = x @ W_v: the output has W_v's dv features, not the embedding's.",
            _layer_variant(value_matrix="none"),
        ),
        Mistake(
            "values projected with W_k",
            "The values come from their own matrix, v = x @ W_v: how a token is found (W_k) and what it hands "
            "over (W_v) are separate.",
            _layer_variant(value_matrix="W_k"),
        ),
        Mistake(
            "softmax over the queries",
            "The softmax runs over the keys, the last axis of the scores (..., L, L): each row of weights sums to 1.",
            _layer_variant(axis=-2),
        ),
        Mistake("scaled by sqrt(d_model)", SCALE_HINT, _layer_variant(scale="d_model")),
        Mistake(
            "no scaling",
            "Divide the scores by sqrt(d_k), d_k = W_q.shape[1], before the softmax.",
            _layer_variant(scale="none"),
        ),
        Mistake(
            "keys times queries",
            "Row i of the weights belongs to query i: the scores are q @ k^T, not k @ q^T.",
            _layer_variant(transposed=True),
        ),
    ),
    hints={
        "type": "Return both results as a tuple: return output, weights.",
        "raised": "Each W maps (..., L, d_model) to its own width: x @ W_q and x @ W_k are (..., L, d_k), "
        "x @ W_v is (..., L, dv). Transpose only the last two axes of k.",
        "values": "Go step by step: q, k, v = x @ W_q, x @ W_k, x @ W_v; scores = q @ k^T / sqrt(d_k); "
        "weights = softmax over the last axis; output = weights @ v. Compare the scores with exercise 1.",
    },
)

# --------------------------------------------------------------------------- an experiment: how much sharper


def _mean_top_weight(scores, factor, every=False):
    """The largest weight of each query of softmax(factor * scores), averaged (or the smallest, ``every``)."""
    top = reference_softmax(factor * scores, axis=-1).max(axis=-1)  # (..., L)
    return float(top.min() if every else top.mean())


def _factor_for(scores, target, every=False):
    """The factor c >= 0 at which the mean top weight of softmax(c * scores) reaches ``target`` (bisection)."""
    low, high = 0.0, 1.0
    while _mean_top_weight(scores, high, every) < target and high < 2.0**60:
        low, high = high, 2 * high
    for _ in range(200):
        middle = (low + high) / 2
        if _mean_top_weight(scores, middle, every) < target:
            low = middle
        else:
            high = middle
        if high - low <= 1e-13 * high:
            break
    return (low + high) / 2


def _sharpening(x, W_q, W_k, target, *, power=1.0, scale="d_k", every=False):
    """The factor on W_q (or a classic wrong version of the experiment), as a 0-d float64 array."""
    x, W_q, W_k = (np.asarray(a, dtype=np.float64) for a in (x, W_q, W_k))
    scores = _scores(x, W_q, W_k, scale=scale)  # (..., L, L)
    return np.asarray(_factor_for(scores, float(target), every) ** power, dtype=np.float64)


def _sharpening_args(L, d_model, d_k, target, batch=(), dtype=np.float32):
    make_layer = _layer_args(L, d_model, d_k, batch=batch, dtype=dtype)
    return lambda rng: (*make_layer(rng), target)


SHARPENING = Exercise(
    name="sharpening_factor",
    function="sharpening_factor",
    params=("x", "W_q", "W_k", "target"),
    lesson=LESSON,
    reference=_sharpening,
    cases=(
        Case(
            "mostly_one_token",
            "x: float32 (5, 8), W_q and W_k: (8, 3), target 0.9",
            _sharpening_args(5, 8, 3, 0.9),
            seed=191,
        ),
        Case(
            "batched_half",
            "x: float32 (2, 6, 4), W_q and W_k: (4, 7), target 0.5",
            _sharpening_args(6, 4, 7, 0.5, batch=(2,)),
            seed=192,
            points=2.0,
        ),
        Case(
            "nearly_one_hot_float64",
            "x: float64 (9, 5), W_q and W_k: (5, 2), target 0.99",
            _sharpening_args(9, 5, 2, 0.99, dtype=np.float64),
            seed=193,
        ),
    ),
    mistakes=(
        Mistake(
            "both projections scaled",
            "Scale W_q only. Scaling W_q AND W_k by c multiplies every score by c * c, so that experiment finds "
            "the square root of the factor asked for.",
            lambda x, W_q, W_k, target: _sharpening(x, W_q, W_k, target, power=0.5),
        ),
        Mistake(
            "scores not divided by sqrt(d_k)",
            "Measure on the layer's own scores, (x W_q)(x W_k)^T / sqrt(d_k): without the 1/sqrt(d_k) the scores "
            "start sqrt(d_k) times larger and the factor found is sqrt(d_k) times too small.",
            lambda x, W_q, W_k, target: _sharpening(x, W_q, W_k, target, scale="none"),
        ),
        Mistake(
            "every query instead of the average",
            "The target is for the AVERAGE over all queries (every batch entry too) of each query's largest "
            "weight; waiting until every single query reaches it needs a larger factor.",
            lambda x, W_q, W_k, target: _sharpening(x, W_q, W_k, target, every=True),
        ),
    ),
    hints={
        "type": "Return a 0-d NumPy float64 array: return np.asarray(factor, dtype=np.float64).",
        "shape": "Return a single number as a 0-d array: np.asarray(factor, dtype=np.float64).",
        "dtype": "Return float64 (np.asarray(factor, dtype=np.float64)), whatever the dtype of x.",
        "values": "Write m(c), the average top weight for W_q scaled by c. m(0) = 1/L (all scores 0), and m grows "
        "with c: double c until m(c) >= target, then halve the bracket [low, high] until it is 1e-7 wide "
        "relative to c.",
    },
    tolerance={"rtol": 1e-4, "atol": 1e-8},
)

EXERCISES = (SCORES, LAYER, SHARPENING)
