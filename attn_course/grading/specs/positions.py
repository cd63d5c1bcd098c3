"""Exercises of lesson 08, positional information: ``solutions/08_positional_information.ipynb``.

* ``sinusoidal_encoding(n, d)``: the ``(n, d)`` float64 encodings of positions
  ``0 .. n-1``, sine and cosine **interleaved**:
  ``PE[pos, 2i] = sin(pos / 10000^(2i/d))``, ``PE[pos, 2i+1] = cos(pos / 10000^(2i/d))``;
* ``apply_rope(x, positions)``: rotate feature pair ``(2i, 2i+1)`` of row
  ``m`` of ``x (..., L, d)`` by the angle ``positions[m] * 10000^(-2i/d)``;
  pairs are **adjacent** features, as in RoFormer and ``attn_course.apply_rope``;
* ``apply_rope_half_split(x, positions)`` (an extension): the same rotations
  in the other common layout, where feature ``i`` pairs with feature
  ``i + d/2`` ("rotate half"); reference: the plain formula.

References: ``attn_course.sinusoidal_encoding`` (``dtype="float64"``) and
``attn_course.apply_rope``. The classic mix-ups (sines and cosines in two
halves, RoPE pairs ``(i, i + d/2)``, a frequency of ``i/d`` instead of
``2i/d``, the rotation the wrong way) each give their own hint.
"""

from __future__ import annotations

import numpy as np

from ...positions import apply_rope as reference_rope
from ...positions import sinusoidal_encoding as reference_encoding
from ..judge import Case, Exercise, Invariant, Mistake, format_index, format_number
from .inputs import normal_array
from .secret_inputs import draw_int

__all__ = ["EXERCISES"]

LESSON = "08_positional_information"


# --------------------------------------------------------------------------- sinusoidal encodings


def _angles(n, d, exponent=lambda i, d: 2 * i / d, first_position=0):
    positions = np.arange(first_position, first_position + n, dtype=np.float64)[:, None]  # (n, 1)
    i = np.arange(d // 2, dtype=np.float64)  # (d/2,)
    return positions * 10000.0 ** (-exponent(i, d))  # (n, d/2)


def _interleave(even, odd):
    n, half = even.shape
    return np.stack([even, odd], axis=-1).reshape(n, 2 * half)


def _halves(n, d):
    angles = _angles(n, d)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=-1)


def _odd_own_index(n, d):
    positions = np.arange(n, dtype=np.float64)[:, None]
    j = np.arange(d, dtype=np.float64)  # every feature with its own index in the exponent
    angles = positions * 10000.0 ** (-j / d)  # (n, d)
    return np.where(np.arange(d) % 2 == 0, np.sin(angles), np.cos(angles))


def pairs_on_the_unit_circle() -> Invariant:
    """Each pair (2i, 2i+1) of every row is (sin a, cos a) of one angle a: its length is 1."""

    def violation(outputs, args, tol):
        encoding = outputs[0]
        _n, _d = encoding.shape
        lengths = np.hypot(encoding[:, 0::2], encoding[:, 1::2])  # (n, d/2)
        bad = np.abs(lengths - 1) > 10 * tol["atol"] + tol["rtol"]
        if bool(np.any(bad)):
            position, pair = np.argwhere(bad)[0]
            return (
                f"features ({2 * pair}, {2 * pair + 1}) of position {position} have length "
                f"{format_number(lengths[position, pair])}, not 1"
            )
        return None

    return Invariant("each pair (2i, 2i+1) is a sine and a cosine of one angle: sin^2 + cos^2 = 1", violation)


ENCODING = Exercise(
    name="sinusoidal_encoding",
    function="sinusoidal_encoding",
    params=("n", "d"),
    lesson=LESSON,
    reference=lambda n, d: reference_encoding(n, d, dtype="float64"),
    cases=(
        Case(
            "small",
            "n = 6 positions, d = 8 features",
            lambda rng: (6, 8),
            seed=181,
            secret=lambda rng: (draw_int(rng, 4, 10), 2 * draw_int(rng, 2, 6)),
        ),
        Case(
            "one_pair",
            "n = 5 positions, d = 2: a single (sin, cos) pair",
            lambda rng: (5, 2),
            seed=182,
            secret=lambda rng: (draw_int(rng, 3, 9), 2),
        ),
        Case(
            "long",
            "n = 50 positions, d = 16 features",
            lambda rng: (50, 16),
            seed=183,
            secret=lambda rng: (draw_int(rng, 30, 80), 2 * draw_int(rng, 6, 12)),
            points=2.0,
        ),
    ),
    # edge cases a learner never sees (the grader runs them after the public case of the same name passed)
    hidden={
        "small": (
            Case(
                "one_position",
                "n = 1 position, d = 6 features: position 0 alone, (1, 6)",
                lambda rng: (1, 6),
                seed=3036,
            ),
        ),
    },
    invariants=(pairs_on_the_unit_circle(),),
    mistakes=(
        Mistake(
            "sines and cosines in two halves",
            "Interleave sines and cosines: even features 0, 2, 4, ... hold sines, odd features 1, 3, 5, ... the "
            "cosines of the same angles (PE[:, 0::2] = sin, PE[:, 1::2] = cos), not all sines then all cosines.",
            _halves,
        ),
        Mistake(
            "cosines first",
            "The even feature 2i holds the sine and the odd feature 2i+1 the cosine, not the other way round.",
            lambda n, d: _interleave(np.cos(_angles(n, d)), np.sin(_angles(n, d))),
        ),
        Mistake(
            "exponent i/d instead of 2i/d",
            "Pair i turns with the frequency 10000^(-2i/d): the exponent is 2i/d, where i = 0 .. d/2 - 1 counts "
            "pairs (np.arange(0, d, 2) / d gives the 2i/d directly).",
            lambda n, d: _interleave(*(f(_angles(n, d, exponent=lambda i, d: i / d)) for f in (np.sin, np.cos))),
        ),
        Mistake(
            "odd features with their own index",
            "Both features of a pair share one angle: feature 2i+1 uses the frequency of pair i, "
            "10000^(-2i/d), not 10000^(-(2i+1)/d).",
            _odd_own_index,
        ),
        Mistake(
            "positions counted from 1",
            "Positions start at 0: the first row is PE[0] = (sin 0, cos 0, ...) = (0, 1, 0, 1, ...).",
            lambda n, d: _interleave(*(f(_angles(n, d, first_position=1)) for f in (np.sin, np.cos))),
        ),
    ),
    hints={
        "dtype": "Return float64, NumPy's default: np.arange(n) and np.sin give float64 unless you ask for "
        "another dtype.",
        "shape": "One row per position and one column per feature: (n, d).",
        "raised": "Make an (n, 1) column of positions and a (d/2,) row of frequencies: their product is the "
        "(n, d/2) table of angles; then fill PE[:, 0::2] with sines and PE[:, 1::2] with cosines.",
    },
)


# --------------------------------------------------------------------------- RoPE


def _rope_variant(pairs="adjacent", direction=1.0, exponent=lambda i, d: 2 * i / d, ignore_positions=False):
    """A wrong RoPE with one classic mistake switched on."""

    def rope(x, positions):
        *_, L, d = x.shape
        where = np.arange(L) if ignore_positions else np.asarray(positions)
        i = np.arange(d // 2, dtype=np.float64)
        angles = where.astype(np.float64)[..., None] * 10000.0 ** (-exponent(i, d)) * direction  # (L, d/2)
        cos, sin = np.cos(angles), np.sin(angles)
        if pairs == "adjacent":
            even, odd = x[..., 0::2], x[..., 1::2]
            out = np.empty_like(x)
            out[..., 0::2] = even * cos - odd * sin
            out[..., 1::2] = even * sin + odd * cos
        else:  # the "rotate half" layout: feature i pairs with feature i + d/2
            first, second = x[..., : d // 2], x[..., d // 2 :]
            out = np.concatenate([first * cos - second * sin, first * sin + second * cos], axis=-1)
        return out.astype(x.dtype)

    return rope


def lengths_kept() -> Invariant:
    """Every row of the result has the length of the same row of x (RoPE only rotates)."""

    def violation(outputs, args, tol):
        rotated = outputs[0]
        before = np.linalg.norm(np.asarray(args[0], dtype=np.float64), axis=-1)
        after = np.linalg.norm(rotated, axis=-1)
        bad = np.abs(after - before) > tol["atol"] * rotated.shape[-1] + tol["rtol"] * before
        if bool(np.any(bad)):
            first = tuple(np.argwhere(bad)[0])
            length, original = format_number(after[first]), format_number(before[first])
            return f"row {format_index(first)} has length {length}, but x's row has {original}"
        return None

    return Invariant("every row keeps its length (a rotation changes no length)", violation)


def _rope_case(shape, positions, dtype=np.float32):
    return lambda rng: (normal_array(rng, shape, dtype), np.asarray(positions, dtype=np.int64))


ROPE = Exercise(
    name="apply_rope",
    function="apply_rope",
    params=("x", "positions"),
    lesson=LESSON,
    reference=reference_rope,
    cases=(
        Case(
            "in_order",
            "x: float32 (5, 6), positions: int64 [0, 1, 2, 3, 4]",
            _rope_case((5, 6), range(5)),
            seed=184,
        ),
        Case(
            "given_positions",
            "x: float32 (4, 8), positions: int64 [3, 0, 7, 12]",
            _rope_case((4, 8), [3, 0, 7, 12]),
            seed=185,
            points=2.0,
        ),
        Case(
            "batched",
            "x: float32 (2, 3, 10), positions: int64 [5, 6, 7] shared by the batch",
            _rope_case((2, 3, 10), [5, 6, 7]),
            seed=186,
        ),
        Case(
            "float64_far",
            "x: float64 (3, 4), positions: int64 [100, 101, 250]",
            _rope_case((3, 4), [100, 101, 250], np.float64),
            seed=187,
        ),
    ),
    hidden={
        "given_positions": (
            Case(
                "one_position",
                "x: float32 (1, 6), positions: int64 [9]: a single vector",
                _rope_case((1, 6), [9]),
                seed=3037,
            ),
            Case(
                "one_pair",
                "x: float32 (5, 2), positions: int64 [2, 0, 4, 1, 3]: d = 2, a single pair",
                _rope_case((5, 2), [2, 0, 4, 1, 3]),
                seed=3038,
            ),
        ),
        "batched": (
            Case(
                "two_batch_axes",
                "x: float32 (2, 3, 4, 6), positions: int64 [7, 2, 5, 0] shared by both batch axes",
                _rope_case((2, 3, 4, 6), [7, 2, 5, 0]),
                seed=3039,
            ),
        ),
    },
    invariants=(lengths_kept(),),
    mistakes=(
        Mistake(
            "pairs split in halves",
            "Pair i is the two adjacent features (2i, 2i+1), x[..., 0::2] with x[..., 1::2], as in the lesson; "
            "pairing feature i with feature i + d/2 (the 'rotate half' layout of some libraries) is a different "
            "arrangement of the same idea and gives different numbers.",
            _rope_variant(pairs="halves"),
        ),
        Mistake(
            "rotated the wrong way",
            "Turn each pair by +m*theta_i: x'_2i = x_2i cos - x_2i+1 sin and x'_2i+1 = x_2i sin + x_2i+1 cos. "
            "The signs of the two sine terms are swapped here.",
            _rope_variant(direction=-1.0),
        ),
        Mistake(
            "positions ignored",
            "Use the given positions, not 0 .. L-1: row m turns by positions[m] * theta_i.",
            _rope_variant(ignore_positions=True),
        ),
        Mistake(
            "exponent i/d instead of 2i/d",
            "theta_i = 10000^(-2i/d), with i = 0 .. d/2 - 1 counting pairs: the exponent is 2i/d "
            "(np.arange(0, d, 2) / d).",
            _rope_variant(exponent=lambda i, d: i / d),
        ),
    ),
    hints={
        "dtype": "Return x's dtype: compute the angles in float64 if you like, then .astype(x.dtype) at the end.",
        "shape": "RoPE keeps the shape of x, (..., L, d).",
        "raised": "positions has L entries: positions[:, None] * theta (a (d/2,) row) gives the (L, d/2) angles, "
        "which broadcast against x[..., 0::2] (..., L, d/2).",
    },
)

# --------------------------------------------------------------------------- RoPE, the half-split layout


HALF_SPLIT = Exercise(
    name="apply_rope_half_split",
    function="apply_rope_half_split",
    params=("x", "positions"),
    lesson=LESSON,
    reference=_rope_variant(pairs="halves"),  # the plain formula with pairs (i, i + d/2)
    cases=(
        Case("in_order", "x: float32 (5, 6), positions: int64 [0, 1, 2, 3, 4]", _rope_case((5, 6), range(5)), seed=231),
        Case(
            "batched_given_positions",
            "x: float32 (2, 3, 8), positions: int64 [4, 9, 1] shared by the batch",
            _rope_case((2, 3, 8), [4, 9, 1]),
            seed=232,
            points=2.0,
        ),
        Case(
            "float64_far",
            "x: float64 (4, 10), positions: int64 [0, 30, 31, 500]",
            _rope_case((4, 10), [0, 30, 31, 500], np.float64),
            seed=233,
        ),
    ),
    hidden={
        "batched_given_positions": (
            Case(
                "one_position",
                "x: float32 (1, 6), positions: int64 [9]: a single vector",
                _rope_case((1, 6), [9]),
                seed=3040,
            ),
            Case(
                "two_batch_axes",
                "x: float32 (2, 3, 4, 10), positions: int64 [7, 2, 5, 0] shared by both batch axes",
                _rope_case((2, 3, 4, 10), [7, 2, 5, 0]),
                seed=3041,
            ),
        ),
    },
    invariants=(lengths_kept(),),
    mistakes=(
        Mistake(
            "adjacent pairs",
            "In this layout pair i is feature i with feature i + d/2: x[..., :d//2] holds the first feature of "
            "every pair and x[..., d//2:] the second. Adjacent pairs (2i, 2i+1) are the other layout, the one of "
            "exercise 2.",
            reference_rope,
        ),
        Mistake(
            "rotated the wrong way",
            "Turn each pair by +m*theta_i: first' = first cos - second sin, second' = first sin + second cos. "
            "The signs of the two sine terms are swapped here.",
            _rope_variant(pairs="halves", direction=-1.0),
        ),
        Mistake(
            "exponent i/d instead of 2i/d",
            "Pair i still turns at theta_i = 10000^(-2i/d), i = 0 .. d/2 - 1: only where its two features sit "
            "changes, not how fast it turns.",
            _rope_variant(pairs="halves", exponent=lambda i, d: i / d),
        ),
    ),
    hints={
        "dtype": "Return x's dtype: compute the angles in float64 if you like, then .astype(x.dtype) at the end.",
        "shape": "The rotation keeps the shape of x, (..., L, d).",
        "raised": "positions has L entries: positions[:, None] * theta (a (d/2,) row) gives the (L, d/2) angles, "
        "which broadcast against x[..., :d//2] (..., L, d/2).",
        "values": "Rotate one vector of d = 4 by hand at position 1: features 0 and 2 form the first pair, "
        "1 and 3 the second.",
    },
)

EXERCISES = (ENCODING, ROPE, HALF_SPLIT)
