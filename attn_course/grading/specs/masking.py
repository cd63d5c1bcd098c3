"""Exercises of lesson 06, masking: ``solutions/06_masking.ipynb``.

* ``causal_mask(n)``: boolean ``(n, n)``, True where key ``j <= i``;
* ``padding_mask(lengths, n)``: boolean ``(B, 1, 1, n)``, True for the first
  ``lengths[b]`` keys of sequence ``b``;
* ``masked_attention(q, k, v, mask)``: attention with a boolean mask, returning
  ``(output, weights)``; a query that may attend to nothing (left padding
  combined with the causal mask) gets zero weights and a zero output, never NaN.

References: ``attn_course.masks.causal_mask``, ``attn_course.masks.padding_mask``
and ``attn_course.scaled_dot_product_attention``. Masks are compared exactly
(booleans), attention within the dtype's tolerance.
"""

from __future__ import annotations

import numpy as np

from ... import masks
from ...attention import scaled_dot_product_attention as reference_attention
from ..judge import (
    Case,
    Exercise,
    Invariant,
    Mistake,
    format_index,
    rows_sum_to_one,
    within_zero_and_one,
    zero_where_masked,
)
from .attention import wrong_attention
from .inputs import keep_mask, normal_array

__all__ = ["EXERCISES"]

LESSON = "06_masking"

BOOL_DTYPE = (
    "A mask holds booleans: build it from a comparison (e.g. j <= i) or with dtype=bool. "
    "np.ones and np.tril give numbers (float64) unless told otherwise."
)


# --------------------------------------------------------------------------- causal


CAUSAL = Exercise(
    name="causal_mask",
    function="causal_mask",
    params=("n",),
    lesson=LESSON,
    reference=masks.causal_mask,
    cases=(
        Case("six_tokens", "n = 6", lambda rng: (6,), seed=161),
        Case("one_token", "n = 1: a single token sees itself", lambda rng: (1,), seed=162),
        Case("nine_tokens", "n = 9", lambda rng: (9,), seed=163),
    ),
    mistakes=(
        Mistake(
            "diagonal excluded",
            "Each position may attend to itself: keep the diagonal (j <= i, not j < i; np.tril's k=0).",
            lambda n: np.tril(np.ones((n, n), dtype=bool), k=-1),
        ),
        Mistake(
            "the future allowed instead of the past",
            "Rows are queries i, columns keys j: query i may attend to keys j <= i, the lower triangle. "
            "The upper triangle lets every position read the future.",
            lambda n: np.triu(np.ones((n, n), dtype=bool)),
        ),
        Mistake(
            "True where blocked",
            "In this course True means 'may attend' (torch's boolean attn_mask convention): the lower triangle "
            "is True and the future is False.",
            lambda n: ~masks.causal_mask(n),
        ),
    ),
    hints={
        "dtype": BOOL_DTYPE,
        "shape": "A causal mask is square, (n, n): one row per query, one column per key.",
        "type": "Return a NumPy boolean array, e.g. built with np.tril or with a comparison of index arrays.",
    },
)


# --------------------------------------------------------------------------- padding


def _lengths_and_n(values, n):
    return lambda rng: (np.asarray(values, dtype=np.int64), n)


def _padding_variant(shape="B11n", keep=lambda j, length: j < length):
    def mask(lengths, n):
        j = np.arange(n)[None, :]  # (1, n)
        real = keep(j, np.asarray(lengths)[:, None])  # (B, n)
        layout = {"B11n": real[:, None, None, :], "Bn": real, "B1n1": real[:, None, :, None]}
        return layout[shape]

    return mask


PADDING = Exercise(
    name="padding_mask",
    function="padding_mask",
    params=("lengths", "n"),
    lesson=LESSON,
    reference=masks.padding_mask,
    cases=(
        Case("lesson_batch", "lengths: int64 [6, 2, 4], n = 6", _lengths_and_n([6, 2, 4], 6), seed=164),
        Case(
            "all_padded",
            "lengths: int64 [2, 5], n = 7: every sequence is padded",
            _lengths_and_n([2, 5], 7),
            seed=165,
        ),
        Case(
            "empty_sequence",
            "lengths: int64 [0, 3, 3, 1], n = 3: the first sequence has no real token",
            _lengths_and_n([0, 3, 3, 1], 3),
            seed=166,
        ),
    ),
    mistakes=(
        Mistake(
            "shape (B, n)",
            "Return shape (B, 1, 1, n): a batch axis, a head axis and a query axis of size 1, then the keys. "
            "Then it broadcasts against scores (B, h, L, n); (B, n) would line B up with the queries.",
            _padding_variant(shape="Bn"),
        ),
        Mistake(
            "queries masked instead of keys",
            "The padding rule is about keys (the last axis): shape (B, 1, 1, n), not (B, 1, n, 1), which would "
            "block whole rows of queries and let real words attend to the padding.",
            _padding_variant(shape="B1n1"),
        ),
        Mistake(
            "one key too many",
            "Sequence b has real keys 0 .. lengths[b] - 1: the test is j < lengths[b], not j <= lengths[b].",
            _padding_variant(keep=lambda j, length: j <= length),
        ),
        Mistake(
            "True on the padding",
            "True means 'may attend': True for the real tokens (j < lengths[b]), False for the padding.",
            _padding_variant(keep=lambda j, length: j >= length),
        ),
    ),
    hints={
        "dtype": BOOL_DTYPE,
        "raised": "Compare a row of key positions with a column of lengths: np.arange(n)[None, :] < "
        "lengths[:, None] is (B, n); then add the two axes of size 1.",
        "shape": "Return shape (B, 1, 1, n): B = len(lengths) sequences, then a head axis and a query axis of "
        "size 1, then n keys.",
    },
)


# --------------------------------------------------------------------------- masked attention


def _causal_left_padding(lengths, n):
    """(B, 1, n, n): causal, and the first n - lengths[b] keys of sequence b are (left) padding."""
    real = np.arange(n)[None, :] >= (n - np.asarray(lengths))[:, None]  # (B, n)
    return masks.causal_mask(n) & real[:, None, None, :]


def _masked_case(shape_q, S, dv, make_mask, dtype=np.float32):
    def make(rng):
        *batch, L, d = shape_q
        q = normal_array(rng, (*batch, L, d), dtype)
        k = normal_array(rng, (*batch, S, d), dtype)
        v = normal_array(rng, (*batch, S, dv), dtype)
        return q, k, v, make_mask(rng)

    return make


def zero_output_where_nothing_allowed() -> Invariant:
    """A query whose mask row is all False has an all-zero output row."""

    def violation(outputs, args, tol):
        output = outputs[0]
        mask = np.broadcast_to(np.asarray(args[3]), outputs[1].shape)
        empty = ~mask.any(axis=-1)  # (..., L)
        bad = empty & np.any(output != 0, axis=-1)
        if bool(np.any(bad)):
            first = np.argwhere(bad)[0]
            return f"query {format_index(first)} may attend to nothing but its output row is not zero"
        return None

    return Invariant("a query that may attend to nothing has a zero output row", violation)


MASKED = Exercise(
    name="masked_attention",
    function="masked_attention",
    params=("q", "k", "v", "mask"),
    lesson=LESSON,
    reference=lambda q, k, v, mask: reference_attention(q, k, v, mask, return_weights=True),
    outputs=("output", "weights"),
    cases=(
        Case(
            "causal",
            "q, k: float32 (6, 4), v: (6, 3), mask: the causal (6, 6)",
            _masked_case((6, 4), 6, 3, lambda rng: masks.causal_mask(6)),
            seed=167,
        ),
        Case(
            "padding",
            "q, k: float32 (2, 1, 5, 4), v: (2, 1, 5, 3), mask: padding (2, 1, 1, 5), lengths [5, 2]",
            _masked_case((2, 1, 5, 4), 5, 3, lambda rng: masks.padding_mask([5, 2], 5)),
            seed=168,
        ),
        Case(
            "left_padding_and_causal",
            "q, k: float32 (2, 1, 5, 4), v: (2, 1, 5, 3), mask: causal & left padding (2, 1, 5, 5), lengths "
            "[5, 2]: three queries may attend to nothing",
            _masked_case((2, 1, 5, 4), 5, 3, lambda rng: _causal_left_padding([5, 2], 5)),
            seed=169,
            points=2.0,
        ),
        Case(
            "cross_float64",
            "q: float64 (3, 7), k: (6, 7), v: (6, 2), mask: bool (3, 6) whose row 2 allows nothing",
            _masked_case((3, 7), 6, 2, lambda rng: keep_mask(rng, (3, 6), empty_rows=(2,)), np.float64),
            seed=170,
        ),
    ),
    invariants=(
        zero_where_masked(1, 3),
        within_zero_and_one(1),
        rows_sum_to_one(1, mask_arg=3),
        zero_output_where_nothing_allowed(),
    ),
    mistakes=(
        Mistake(
            "mask applied after the softmax",
            "Block the scores before the softmax (blocked scores become -inf), so that the allowed keys share "
            "the whole weight of 1. Zeroing weights afterwards leaves rows that sum to less than 1.",
            wrong_attention(mask_after=True),
        ),
        Mistake(
            "NaN for a query that may attend to nothing",
            "A row whose mask is all False has the maximum -inf, and -inf - (-inf) is NaN (lesson section 4). "
            "Shift such rows by 0 instead and divide by 1 where the sum is 0: their weights and output are zero.",
            wrong_attention(nan_rows=True),
        ),
        Mistake(
            "large negative number instead of -inf",
            "With -1e9 instead of -inf, a query that may attend to nothing spreads its weight evenly over the "
            "blocked keys. It must get zero weights and a zero output.",
            wrong_attention(fill=-1e9),
        ),
        Mistake(
            "mask inverted",
            "The mask is True where a query may attend and False where it may not.",
            wrong_attention(invert=True),
        ),
        Mistake(
            "no scaling",
            "Divide the scores by sqrt(d) (d = q.shape[-1]) before masking them, as in lesson 03.",
            wrong_attention(score_scale=False),
        ),
    ),
    hints={
        "type": "Return both results as a tuple: return output, weights.",
        "nonfinite": "A query that may attend to nothing must get zero weights and a zero output row, not NaN: "
        "its row maximum is -inf, and -inf - (-inf) is NaN.",
        "raised": "The mask broadcasts against the scores (..., L, S): np.where(mask, scores, -np.inf) works for "
        "every mask shape here. Transpose only the last two axes of k.",
    },
)

EXERCISES = (CAUSAL, PADDING, MASKED)
