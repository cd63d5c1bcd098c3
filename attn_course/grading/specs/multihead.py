"""Exercises of lesson 07, multi-head attention: ``solutions/07_multi_head_attention.ipynb``.

* ``split_heads(x, num_heads)``: ``(..., L, h * head_dim) -> (..., h, L, head_dim)``,
  head ``i`` taking features ``i * head_dim .. (i + 1) * head_dim - 1``;
* ``merge_heads(x)``: the exact inverse, ``(..., h, L, head_dim) -> (..., L, h * head_dim)``;
* ``multi_head_attention(x, W_q, W_k, W_v, W_o, num_heads)``: multi-head
  self-attention without biases, returning ``(output, weights)``,
  ``(..., L, d_model)`` and the per-head weights ``(..., h, L, L)``;
* ``intermediate_shapes(B, L, d_model, num_heads)`` (predict, then verify):
  the shape of one projection after the split, ``(B, h, L, d_model / h)``,
  the shape of the weights, ``(B, h, L, L)``, and how many scores one layer
  computes, ``B h L^2`` (independent of ``d_model``: more heads, more scores).
  Read off the package's layer run on zeros.

References: ``attn_course.split_heads``, ``attn_course.merge_heads`` and
``attn_course.MultiHeadAttention`` (bias-free, holding the given weights).
Sizes differ (``B=2, h=4, L=5, head_dim=3``, ...), so a reshape that skips the
transpose keeps the shape but gets the values wrong, and the check says so.
"""

from __future__ import annotations

import math

import numpy as np

from ...multihead import MultiHeadAttention
from ...multihead import merge_heads as reference_merge
from ...multihead import split_heads as reference_split
from ...softmax import softmax as reference_softmax
from ..judge import Case, Exercise, Mistake, rows_sum_to_one, within_zero_and_one
from .inputs import normal_array
from .secret_inputs import heads_case

__all__ = ["EXERCISES"]

LESSON = "07_multi_head_attention"


def _swap(x):
    return np.swapaxes(x, -1, -2)


# --------------------------------------------------------------------------- the wrong reshapes


def _split_no_transpose(x, num_heads):
    *batch, L, width = x.shape
    return x.reshape(*batch, num_heads, L, width // num_heads)


def _split_round_robin(x, num_heads):
    *batch, L, width = x.shape
    return np.moveaxis(x.reshape(*batch, L, width // num_heads, num_heads), -1, -3)


def _split_heads_last(x, num_heads):
    *batch, L, width = x.shape
    return x.reshape(*batch, L, num_heads, width // num_heads)


def merge_heads_no_transpose(x):
    *batch, h, L, head_dim = x.shape
    return x.reshape(*batch, L, h * head_dim)


def _merge_interleaved(x):
    *batch, h, L, head_dim = x.shape
    return np.moveaxis(x, -3, -1).reshape(*batch, L, h * head_dim)


NO_TRANSPOSE_SPLIT = (
    "A reshape alone keeps the memory order: reshaping (L, h * head_dim) straight to (h, L, head_dim) mixes "
    "positions and features. Reshape to (..., L, h, head_dim) first, then swap the L and h axes."
)
WRONG_ORDER_MERGE = (
    "The heads were merged in the wrong order: a reshape alone of (..., h, L, head_dim) to (..., L, "
    "h * head_dim) mixes positions and heads. Swap the h and L axes back first, (..., L, h, head_dim), then "
    "reshape."
)


def _split_case(shape, num_heads, dtype=np.float32):
    return lambda rng: (normal_array(rng, shape, dtype), num_heads)


SPLIT = Exercise(
    name="split_heads",
    function="split_heads",
    params=("x", "num_heads"),
    lesson=LESSON,
    reference=reference_split,
    cases=(
        Case("single", "x: float32 (3, 8), num_heads = 2 -> (2, 3, 4)", _split_case((3, 8), 2), seed=171),
        Case("batched", "x: float32 (2, 5, 12), num_heads = 4 -> (2, 4, 5, 3)", _split_case((2, 5, 12), 4), seed=172),
        Case(
            "float64",
            "x: float64 (7, 6), num_heads = 3 -> (3, 7, 2)",
            _split_case((7, 6), 3, np.float64),
            seed=173,
        ),
    ),
    # edge cases a learner never sees (the grader runs them after the public case of the same name passed)
    hidden={
        "single": (
            Case(
                "one_head",
                "x: float32 (4, 5), num_heads = 1 -> (1, 4, 5): a single head",
                _split_case((4, 5), 1),
                seed=3028,
            ),
            Case(
                "one_feature_per_head",
                "x: float32 (5, 3), num_heads = 3 -> (3, 5, 1): head_dim = 1",
                _split_case((5, 3), 3),
                seed=3029,
            ),
        ),
        "batched": (
            Case(
                "two_batch_axes",
                "x: float32 (2, 3, 5, 28), num_heads = 4 -> (2, 3, 4, 5, 7): two leading batch axes",
                _split_case((2, 3, 5, 28), 4),
                seed=3030,
            ),
        ),
    },
    mistakes=(
        Mistake("reshaped without the transpose", NO_TRANSPOSE_SPLIT, _split_no_transpose),
        Mistake(
            "features dealt out round-robin",
            "Head i takes a block of consecutive features, i * head_dim .. (i + 1) * head_dim - 1, not every "
            "h-th feature: reshape the last axis to (h, head_dim), in that order.",
            _split_round_robin,
        ),
        Mistake(
            "head axis after the positions",
            "After the reshape to (..., L, h, head_dim) the head axis must move in front of L: "
            "(..., h, L, head_dim), so that the heads act as one more batch axis.",
            _split_heads_last,
        ),
    ),
    hints={
        "raised": "head_dim = x.shape[-1] // num_heads; keep the leading axes with *x.shape[:-2] (or x.shape[:-1]) "
        "in the reshape, and move axes with np.swapaxes(..., -2, -3).",
        "shape": "(..., L, h * head_dim) becomes (..., h, L, head_dim): the heads go in front of the positions.",
    },
)

MERGE = Exercise(
    name="merge_heads",
    function="merge_heads",
    params=("x",),
    lesson=LESSON,
    reference=reference_merge,
    cases=(
        Case("single", "x: float32 (2, 3, 4) -> (3, 8)", lambda rng: (normal_array(rng, (2, 3, 4)),), seed=174),
        Case(
            "batched", "x: float32 (2, 4, 5, 3) -> (2, 5, 12)", lambda rng: (normal_array(rng, (2, 4, 5, 3)),), seed=175
        ),
        Case(
            "float64",
            "x: float64 (3, 7, 2) -> (7, 6)",
            lambda rng: (normal_array(rng, (3, 7, 2), np.float64),),
            seed=176,
        ),
    ),
    hidden={
        "single": (
            Case(
                "one_head",
                "x: float32 (1, 4, 5) -> (4, 5): a single head",
                lambda rng: (normal_array(rng, (1, 4, 5)),),
                seed=3031,
            ),
        ),
        "batched": (
            Case(
                "two_batch_axes",
                "x: float32 (2, 3, 4, 5, 6) -> (2, 3, 5, 24): two leading batch axes",
                lambda rng: (normal_array(rng, (2, 3, 4, 5, 6)),),
                seed=3032,
            ),
        ),
    },
    mistakes=(
        Mistake("heads merged in the wrong order", WRONG_ORDER_MERGE, merge_heads_no_transpose),
        Mistake(
            "features interleaved",
            "Head 0's features come first, then head 1's, and so on: move the head axis next to head_dim as "
            "(..., L, h, head_dim), not (..., L, head_dim, h), before the reshape.",
            _merge_interleaved,
        ),
    ),
    hints={
        "raised": "Read the sizes with *batch, h, L, head_dim = x.shape, swap the h and L axes, then reshape to "
        "(*batch, L, h * head_dim).",
        "shape": "(..., h, L, head_dim) becomes (..., L, h * head_dim).",
    },
)


# --------------------------------------------------------------------------- multi-head attention


def bias_free_layer(W_q, W_k, W_v, W_o, num_heads) -> MultiHeadAttention:
    """The package's ``MultiHeadAttention`` without biases, holding exactly these weights."""
    layer = MultiHeadAttention.__new__(MultiHeadAttention)
    layer._set_parameters(num_heads, {"q": W_q, "k": W_k, "v": W_v, "o": W_o}, None, W_q.dtype, None)
    return layer


def _reference_mha(x, W_q, W_k, W_v, W_o, num_heads):
    return bias_free_layer(W_q, W_k, W_v, W_o, num_heads)(x, return_weights=True)


def _mha_case(L, d_model, num_heads, batch=(), dtype=np.float32):
    def make(rng):
        x = normal_array(rng, (*batch, L, d_model), dtype)
        scale = 1.0 / math.sqrt(d_model)
        W_q, W_k, W_v, W_o = ((normal_array(rng, (d_model, d_model), np.float64) * scale).astype(dtype) for _ in "qkvo")
        return x, W_q, W_k, W_v, W_o, num_heads

    return make


def _mha_variant(split=reference_split, merge=reference_merge, scale="head_dim", output_matrix=True, one_head=False):
    """A wrong multi-head attention with one classic mistake switched on: ``(output, weights)``."""

    def attention(x, W_q, W_k, W_v, W_o, num_heads):
        heads = 1 if one_head else num_heads
        q, k, v = (split(x @ W, heads) for W in (W_q, W_k, W_v))  # (..., h, L, head_dim)
        d = q.shape[-1] if scale == "head_dim" else x.shape[-1]
        weights = reference_softmax(q @ _swap(k) / math.sqrt(d))  # (..., h, L, L)
        out = merge(weights @ v)  # (..., L, d_model)
        if output_matrix:
            out = out @ W_o
        return out.astype(x.dtype), weights.astype(x.dtype)

    return attention


MHA = Exercise(
    name="multi_head_attention",
    function="multi_head_attention",
    params=("x", "W_q", "W_k", "W_v", "W_o", "num_heads"),
    lesson=LESSON,
    reference=_reference_mha,
    outputs=("output", "weights"),
    cases=(
        Case(
            "single",
            "x: float32 (5, 12), W_q, W_k, W_v, W_o: (12, 12), num_heads = 3",
            _mha_case(5, 12, 3),
            seed=177,
            points=2.0,
        ),
        Case(
            "batched",
            "x: float32 (2, 5, 12), W_q, W_k, W_v, W_o: (12, 12), num_heads = 4",
            _mha_case(5, 12, 4, batch=(2,)),
            seed=178,
            points=2.0,
        ),
        Case(
            "float64",
            "x: float64 (7, 8), W_q, W_k, W_v, W_o: (8, 8), num_heads = 2",
            _mha_case(7, 8, 2, dtype=np.float64),
            seed=179,
        ),
    ),
    hidden={
        "single": (
            Case(
                "one_head",
                "x: float32 (4, 6), W_q, W_k, W_v, W_o: (6, 6), num_heads = 1: the weights are (1, 4, 4)",
                _mha_case(4, 6, 1),
                seed=3033,
            ),
            Case(
                "one_token",
                "x: float32 (1, 12), W_q, W_k, W_v, W_o: (12, 12), num_heads = 3: a sequence of one token",
                _mha_case(1, 12, 3),
                seed=3034,
            ),
        ),
        "batched": (
            Case(
                "two_batch_axes",
                "x: float32 (2, 3, 5, 8), W_q, W_k, W_v, W_o: (8, 8), num_heads = 4: two leading batch axes",
                _mha_case(5, 8, 4, batch=(2, 3)),
                seed=3035,
            ),
        ),
    },
    invariants=(within_zero_and_one(1), rows_sum_to_one(1)),
    mistakes=(
        Mistake("heads merged in the wrong order", WRONG_ORDER_MERGE, _mha_variant(merge=merge_heads_no_transpose)),
        Mistake("heads split without the transpose", NO_TRANSPOSE_SPLIT, _mha_variant(split=_split_no_transpose)),
        Mistake(
            "scaled by sqrt(d_model)",
            "Each head is an attention of its own over head_dim = d_model / num_heads features: scale its scores "
            "by 1/sqrt(head_dim), not 1/sqrt(d_model).",
            _mha_variant(scale="d_model"),
        ),
        Mistake(
            "no output projection",
            "After merging the heads, mix them with the output matrix: output = merged @ W_o. Without W_o each "
            "head's result stays in its own slice of features.",
            _mha_variant(output_matrix=False),
        ),
        Mistake(
            "a single head",
            "Split the projected queries, keys and values into num_heads heads (split_heads) so that each head "
            "gets its own (L, L) weights: the weights are (..., h, L, L).",
            _mha_variant(one_head=True),
        ),
    ),
    hints={
        "type": "Return both results as a tuple: return output, weights.",
        "raised": "Project first (x @ W_q is (..., L, d_model)), then split into heads (..., h, L, head_dim); "
        "transpose only the last two axes of k.",
        "shape": "The output is (..., L, d_model) like x; the weights hold one (L, L) matrix per head: (..., h, L, L).",
        "values": "Go step by step: q, k, v = split_heads(x @ W, num_heads); per-head attention with the scale "
        "1/sqrt(head_dim); merge_heads; then @ W_o. Check split_heads and merge_heads with their own tests first.",
    },
)

# --------------------------------------------------------------------------- predicting every shape


def _shapes_by_running(B, L, d_model, num_heads):
    """``(per_head_shape, weights_shape, score_count)`` read off the package's layer run on zeros (int64)."""
    x = np.zeros((B, L, d_model), dtype=np.float32)  # (B, L, d_model)
    W = np.zeros((d_model, d_model), dtype=np.float32)
    per_head = reference_split(x @ W, num_heads)  # (B, h, L, head_dim)
    _, weights = bias_free_layer(W, W, W, W, num_heads)(x, return_weights=True)  # (B, h, L, L)
    as_ints = np.asarray(per_head.shape, dtype=np.int64), np.asarray(weights.shape, dtype=np.int64)
    return (*as_ints, np.asarray(weights.size, dtype=np.int64))


def _shapes_variant(heads_first=True, head_dim="d_model / h", one_matrix=False):
    """A wrong prediction with one classic mistake switched on."""

    def predict(B, L, d_model, num_heads):
        width = d_model // num_heads if head_dim == "d_model / h" else d_model
        per_head = (B, num_heads, L, width) if heads_first else (B, L, num_heads, width)
        weights = (B, L, L) if one_matrix else (B, num_heads, L, L)
        count = int(np.prod(weights))
        return (np.asarray(per_head, dtype=np.int64), np.asarray(weights, dtype=np.int64), np.asarray(count))

    return predict


SHAPES = Exercise(
    name="intermediate_shapes",
    function="intermediate_shapes",
    params=("B", "L", "d_model", "num_heads"),
    lesson=LESSON,
    reference=_shapes_by_running,
    outputs=("per_head_shape", "weights_shape", "score_count"),
    cases=(
        Case(
            "four_heads",
            "B = 2, L = 5, d_model = 12, num_heads = 4",
            lambda rng: (2, 5, 12, 4),
            seed=221,
            secret=heads_case((2, 3), (3, 5), (2, 4)),
        ),
        Case(
            "three_heads",
            "B = 1, L = 7, d_model = 6, num_heads = 3",
            lambda rng: (1, 7, 6, 3),
            seed=222,
            secret=heads_case((1, 1), (2, 4), (2, 3)),
        ),
        Case(
            "wide_heads",
            "B = 3, L = 4, d_model = 10, num_heads = 2",
            lambda rng: (3, 4, 10, 2),
            seed=223,
            secret=heads_case((2, 4), (2, 2), (4, 7)),
            points=2.0,
        ),
    ),
    mistakes=(
        Mistake(
            "heads left after the positions",
            "After the split the head axis comes BEFORE the positions, (B, h, L, head_dim): that is what lets one "
            "batched product q @ k^T give every head its own (L, L) scores. (B, L, h, head_dim) is only the first, "
            "reshaping step.",
            _shapes_variant(heads_first=False),
        ),
        Mistake(
            "each head as wide as the model",
            "The heads SHARE the d_model features: each one gets head_dim = d_model // num_heads of them, not all "
            "d_model.",
            _shapes_variant(head_dim="d_model"),
        ),
        Mistake(
            "one weight matrix for all heads",
            "Every head computes its own (L, L) weights, so there are B * h of them: shape (B, h, L, L), and "
            "B * h * L * L scores in all.",
            _shapes_variant(one_matrix=True),
        ),
    ),
    hints={
        "type": "Return the three results as a tuple of integer arrays: "
        "return np.array(per_head_shape), np.array(weights_shape), np.asarray(score_count).",
        "dtype": "Return integer arrays (np.array of Python ints gives int64); the count as np.asarray(count).",
        "shape": "The two shapes have four numbers each; the count is a single number, a 0-d array.",
        "values": "Follow one tensor through the layer on paper: x (B, L, d_model) -> x @ W_q -> split into heads "
        "-> q @ k^T. Write the shape after each step.",
    },
)

EXERCISES = (SPLIT, MERGE, MHA, SHAPES)
