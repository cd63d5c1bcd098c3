"""Exercises of lesson 06, masking: ``solutions/06_masking.ipynb``.

* ``causal_mask(n)``: boolean ``(n, n)``, True where key ``j <= i``;
* ``padding_mask(lengths, n)``: boolean ``(B, 1, 1, n)``, True for the first
  ``lengths[b]`` keys of sequence ``b``;
* ``left_padded_causal_mask(lengths, n)`` (an extension): boolean
  ``(B, 1, n, n)`` for a batch padded on the LEFT (sequence ``b``'s real tokens
  sit at positions ``n - lengths[b] .. n - 1``, as when decoding a batch whose
  prompts end together) under the causal rule: query ``i`` may attend to key
  ``j`` when ``j <= i`` and ``j >= n - lengths[b]``. The first
  ``n - lengths[b]`` queries of sequence ``b`` may attend to nothing.

(Attention under such masks, with the rows that keep nothing, is exercise 03's
``scaled_dot_product_attention``.) References: ``attn_course.masks.causal_mask``
and ``attn_course.masks.padding_mask``; the left-padded mask is the causal mask
and the plain formula for the left padding. Masks are compared exactly
(booleans).
"""

from __future__ import annotations

import numpy as np

from ... import masks
from ..judge import Case, Exercise, Mistake
from .secret_inputs import draw_int, lengths_case

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
        Case("six_tokens", "n = 6", lambda rng: (6,), seed=161, secret=lambda rng: (draw_int(rng, 3, 12),)),
        Case(
            "one_token",
            "n = 1: a single token sees itself",
            lambda rng: (1,),
            seed=162,
            secret=lambda rng: (draw_int(rng, 2, 3),),
        ),
        Case("nine_tokens", "n = 9", lambda rng: (9,), seed=163, secret=lambda rng: (draw_int(rng, 7, 14),)),
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
        Case(
            "lesson_batch",
            "lengths: int64 [6, 2, 4], n = 6",
            _lengths_and_n([6, 2, 4], 6),
            seed=164,
            secret=lengths_case((2, 4), (5, 9), "full"),
        ),
        Case(
            "all_padded",
            "lengths: int64 [2, 5], n = 7: every sequence is padded",
            _lengths_and_n([2, 5], 7),
            seed=165,
            secret=lengths_case((2, 4), (5, 9), "padded"),
        ),
        Case(
            "empty_sequence",
            "lengths: int64 [0, 3, 3, 1], n = 3: the first sequence has no real token",
            _lengths_and_n([0, 3, 3, 1], 3),
            seed=166,
            secret=lengths_case((3, 5), (3, 8), "empty"),
        ),
    ),
    # edge cases a learner never sees (the grader runs them after the public case of the same name passed)
    hidden={
        "lesson_batch": (
            Case(
                "one_sequence", "lengths: int64 [3], n = 5: a batch of one sequence", _lengths_and_n([3], 5), seed=3025
            ),
            Case(
                "one_position",
                "lengths: int64 [1, 0, 1], n = 1: sequences of one position",
                _lengths_and_n([1, 0, 1], 1),
                seed=3026,
            ),
        ),
    },
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


# --------------------------------------------------------------------------- left padding and the causal rule


def _left_causal(lengths, n, *, side="left", causal="j <= i", heads=True):
    """(B, 1, n, n): causal and left padding, or a classic wrong version of it."""
    lengths = np.asarray(lengths)[:, None]  # (B, 1)
    j = np.arange(n)[None, :]  # (1, n)
    real = j >= n - lengths if side == "left" else j < lengths  # (B, n): key j is a real token
    i, j_square = np.arange(n)[:, None], np.arange(n)[None, :]  # (n, 1), (1, n)
    rule = {"j <= i": j_square <= i, "j < i": j_square < i, "none": np.ones((n, n), dtype=bool)}[causal]
    mask = rule[None, :, :] & real[:, None, :]  # (B, n, n)
    return mask[:, None, :, :] if heads else mask  # (B, 1, n, n)


def _left_causal_reference(lengths, n):
    real = np.arange(n)[None, :] >= n - np.asarray(lengths)[:, None]  # (B, n): the left padding, a plain formula
    return masks.causal_mask(n)[None, None, :, :] & real[:, None, None, :]  # (B, 1, n, n)


LEFT_CAUSAL = Exercise(
    name="left_padded_causal_mask",
    function="left_padded_causal_mask",
    params=("lengths", "n"),
    lesson=LESSON,
    reference=_left_causal_reference,
    cases=(
        Case(
            "two_prompts",
            "lengths: int64 [5, 2], n = 5: sequence 1 starts with 3 padding tokens",
            _lengths_and_n([5, 2], 5),
            seed=171,
            secret=lengths_case((2, 3), (4, 8), "full"),
        ),
        Case(
            "with_empty",
            "lengths: int64 [3, 0, 6], n = 6: sequence 1 is all padding",
            _lengths_and_n([3, 0, 6], 6),
            seed=172,
            secret=lengths_case((3, 4), (4, 8), "empty"),
            points=2.0,
        ),
        Case(
            "one_short",
            "lengths: int64 [4], n = 7",
            _lengths_and_n([4], 7),
            seed=173,
            secret=lengths_case((1, 1), (4, 9), "padded"),
        ),
    ),
    hidden={
        "with_empty": (
            Case(
                "one_position",
                "lengths: int64 [1, 0, 1], n = 1: sequences of one position, one of them padding",
                _lengths_and_n([1, 0, 1], 1),
                seed=3027,
            ),
        ),
    },
    mistakes=(
        Mistake(
            "padding on the right",
            "Here the padding comes FIRST: sequence b's real tokens are the last lengths[b] positions, "
            "j >= n - lengths[b]. j < lengths[b] is the rule for padding on the right.",
            lambda lengths, n: _left_causal(lengths, n, side="right"),
        ),
        Mistake(
            "causal rule forgotten",
            "Combine both rules with &: the key must be a real token AND not in the future of the query (j <= i).",
            lambda lengths, n: _left_causal(lengths, n, causal="none"),
        ),
        Mistake(
            "diagonal excluded",
            "Each real token may attend to itself: j <= i, not j < i.",
            lambda lengths, n: _left_causal(lengths, n, causal="j < i"),
        ),
        Mistake(
            "no head axis",
            "Return shape (B, 1, n, n): a head axis of size 1 after the batch axis, so that the mask broadcasts "
            "against scores (B, h, n, n).",
            lambda lengths, n: _left_causal(lengths, n, heads=False),
        ),
    ),
    hints={
        "dtype": BOOL_DTYPE,
        "shape": "Return shape (B, 1, n, n): batch, a head axis of size 1, queries, keys.",
        "raised": "Build the two rules separately, a causal (n, n) and a padding (B, n), then give each the axes of "
        "size 1 it lacks ([None, None] and [:, None, None, :]) and combine them with &.",
        "values": "Draw the (n, n) mask of one sequence with 2 padding tokens first by hand: which queries may see "
        "nothing at all?",
    },
)

EXERCISES = (CAUSAL, PADDING, LEFT_CAUSAL)
