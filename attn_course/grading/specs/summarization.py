"""Exercises of lesson 17, summarization: ``solutions/17_application_summarization.ipynb``.

The lesson measures where a summarizer's cross-attention goes: how much of each
output character's attention lands on each part of the log (its own sentence,
routine events, filler, separators), against what an even spread would give.
Both pieces of that measurement, for any labelling of the source:

* ``attention_shares(weights, labels, num_parts)``: weights ``(h, T, S)`` of
  ``h`` heads, labels ``(S,)`` int64 with the part ``0 .. num_parts - 1`` of
  each source position, or ``-1`` for padding; returns ``(T, num_parts)``,
  ``shares[t, p] = mean over heads of sum_{s: labels[s] = p} weights[., t, s]``;
* ``even_spread_shares(labels, num_parts)`` (predict, then verify): what an
  attention spread evenly over the real (not padding) positions gives each
  part, ``count(labels == p) / count(labels >= 0)``, a float64 ``(num_parts,)``.

References: these formulas in float64 at grading time (the notebook checks the
second on the lesson's own log with ``attn_course.data.sentence_spans``).
"""

from __future__ import annotations

import numpy as np

from ..judge import Case, Exercise, Mistake, rows_sum_to_one
from .inputs import normal_array

__all__ = ["EXERCISES"]

LESSON = "17_application_summarization"


def _shares(weights, labels, num_parts, *, heads="mean", per_position=False):
    labels = np.asarray(labels)
    columns = []
    for part in range(num_parts):
        chosen = weights[..., labels == part]  # (h, T, n_part)
        if per_position:
            columns.append(chosen.mean(axis=-1) if chosen.shape[-1] else np.zeros(weights.shape[:-1]))
        else:
            columns.append(chosen.sum(axis=-1))
    per_head = np.stack(columns, axis=-1)  # (h, T, num_parts)
    combined = {"mean": per_head.mean(axis=0), "sum": per_head.sum(axis=0), "first": per_head[0]}[heads]
    return combined.astype(weights.dtype)


def _one_more_part(make):
    """``make``'s arguments with ``num_parts`` one larger: the last part has no position in the labels."""

    def make_more(rng):
        *args, num_parts = make(rng)
        return (*args, num_parts + 1)

    return make_more


def _weights_case(heads, T, S, num_parts, padding=0, dtype=np.float32):
    """Softmax weights over the S - padding real positions (0 on padding), and labels covering every part."""

    def make(rng):
        real = S - padding
        scores = normal_array(rng, (heads, T, real), np.float64) * 2
        weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
        weights /= weights.sum(axis=-1, keepdims=True)
        weights = np.concatenate([weights, np.zeros((heads, T, padding))], axis=-1).astype(dtype)
        labels = np.concatenate([np.arange(num_parts), rng.integers(0, num_parts, real - num_parts)])
        labels = np.concatenate([rng.permutation(labels), np.full(padding, -1)]).astype(np.int64)
        return weights, labels, num_parts

    return make


SHARES = Exercise(
    name="attention_shares",
    function="attention_shares",
    params=("weights", "labels", "num_parts"),
    lesson=LESSON,
    reference=_shares,
    cases=(
        Case(
            "four_heads",
            "weights: float32 (4, 3, 9), labels: (9,) in 0..2, num_parts = 3",
            _weights_case(4, 3, 9, 3),
            seed=1701,
            points=2.0,
        ),
        Case(
            "padded_source",
            "weights: float32 (2, 5, 11) with the last 3 positions padding (label -1), num_parts = 4",
            _weights_case(2, 5, 11, 4, padding=3),
            seed=1702,
            points=2.0,
        ),
        Case(
            "float64",
            "weights: float64 (3, 6, 7), labels: (7,) in 0..4, num_parts = 5",
            _weights_case(3, 6, 7, 5, dtype=np.float64),
            seed=1703,
        ),
    ),
    # edge cases a learner never sees (the grader runs them after the public case of the same name passed)
    hidden={
        "four_heads": (
            Case(
                "one_head_one_output",
                "weights: float32 (1, 1, 8), labels: (8,) in 0..2, num_parts = 3: a single head and output position",
                _weights_case(1, 1, 8, 3),
                seed=3077,
            ),
            Case(
                "empty_part",
                "weights: float32 (2, 4, 7), labels: (7,) in 0..2, num_parts = 4: part 3 has no position, its "
                "share is 0",
                _one_more_part(_weights_case(2, 4, 7, 3)),
                seed=3078,
            ),
        ),
    },
    invariants=(rows_sum_to_one(),),
    mistakes=(
        Mistake(
            "heads summed",
            "Average over the heads, do not add them: each head's weights in a row sum to 1, so the shares of h "
            "heads added sum to h.",
            lambda w, labels, n: _shares(w, labels, n, heads="sum"),
        ),
        Mistake(
            "first head only",
            "Use every head: the lesson's shares average the weights over the h heads (axis 0).",
            lambda w, labels, n: _shares(w, labels, n, heads="first"),
        ),
        Mistake(
            "mean per position",
            "A share is the TOTAL weight a part receives: sum the weights of its positions. Their mean would make a "
            "long part and a short one look alike.",
            lambda w, labels, n: _shares(w, labels, n, per_position=True),
        ),
    ),
    hints={
        "shape": "One row per output position t, one column per part: (T, num_parts). Average over axis 0 (heads).",
        "dtype": "Keep the weights' dtype: float32 in, float32 out.",
        "values": "For each part p, weights[..., labels == p] selects its source positions; add them up along the "
        "last axis, then average over the heads.",
    },
)


def _even(labels, num_parts, *, count_padding=False, per_part=False):
    labels = np.asarray(labels)
    if per_part:
        return np.full(num_parts, 1.0 / num_parts)
    counts = np.array([np.count_nonzero(labels == part) for part in range(num_parts)], dtype=np.float64)
    total = labels.size if count_padding else np.count_nonzero(labels >= 0)
    return counts / total


def _labels_case(S, num_parts, padding):
    def make(rng):
        real = np.concatenate([np.arange(num_parts), rng.integers(0, num_parts, S - padding - num_parts)])
        return np.concatenate([rng.permutation(real), np.full(padding, -1)]).astype(np.int64), num_parts

    return make


EVEN = Exercise(
    name="even_spread_shares",
    function="even_spread_shares",
    params=("labels", "num_parts"),
    lesson=LESSON,
    reference=_even,
    cases=(
        Case("no_padding", "labels: (12,) in 0..2, num_parts = 3", _labels_case(12, 3, 0), seed=1711),
        Case(
            "padded",
            "labels: (15,) in 0..3 with the last 4 positions padding (-1), num_parts = 4",
            _labels_case(15, 4, 4),
            seed=1712,
            points=2.0,
        ),
        Case(
            "many_parts", "labels: (20,) in 0..4, 2 of them padding, num_parts = 5", _labels_case(20, 5, 2), seed=1713
        ),
    ),
    hidden={
        "padded": (
            Case(
                "empty_part",
                "labels: (9,) in 0..2, 2 of them padding, num_parts = 4: part 3 has no position, its share is 0",
                _one_more_part(_labels_case(9, 3, 2)),
                seed=3079,
            ),
        ),
    },
    invariants=(rows_sum_to_one(),),
    mistakes=(
        Mistake(
            "padding counted",
            "Attention never lands on padding (its weights there are 0): spread evenly over the REAL positions, "
            "count(labels == p) / count(labels >= 0).",
            lambda labels, n: _even(labels, n, count_padding=True),
        ),
        Mistake(
            "equal per part",
            "An even spread is even over POSITIONS, not over parts: a part with more characters gets more of it.",
            lambda labels, n: _even(labels, n, per_part=True),
        ),
    ),
    hints={
        "type": "Return a NumPy float64 array of num_parts shares.",
        "shape": "One share per part: (num_parts,).",
        "dtype": "Return float64: np.bincount or np.count_nonzero counts are integers, divide them as floats.",
        "values": "Each real position gets 1 / (number of real positions); a part gets that times its number of "
        "positions.",
    },
)

EXERCISES = (SHARES, EVEN)
