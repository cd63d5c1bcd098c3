"""Exercises of lesson 10, the cost of attention: ``solutions/10_the_cost_of_attention.ipynb``.

* ``attention_flops(B, H, N, d)``: the floating-point operations of the two
  matrix products of dense attention, ``4 * B * H * N**2 * d``;
* ``score_matrix_bytes(B, H, N, itemsize)``: the bytes of the score matrices
  of one layer, ``B * H * N**2 * itemsize``;
* ``longest_sequence(memory_bytes, B, H, itemsize)`` (predict, then verify):
  the largest ``N`` whose score matrices fit in ``memory_bytes``,
  ``floor(sqrt(memory_bytes / (B * H * itemsize)))``, computed exactly with
  integers.

All take Python ``int``s and return a 0-d NumPy float64 array (the grader
records arrays only; a float64 also holds the large counts exactly). The
references are these formulas, evaluated at grading time.
"""

from __future__ import annotations

import math

import numpy as np

from ..judge import Case, Exercise, Mistake
from .secret_inputs import draw_from, draw_int, longest_case

__all__ = ["EXERCISES"]

LESSON = "10_the_cost_of_attention"

TYPE_HINT = (
    "Return a 0-d NumPy float64 array, not a Python number or a NumPy scalar: "
    "return np.asarray(value, dtype=np.float64)."
)


def _as_result(value) -> np.ndarray:
    return np.asarray(float(value), dtype=np.float64)


def _flops(B, H, N, d, *, factor=4, power=2, heads=True):
    return _as_result(factor * B * (H if heads else 1) * N**power * d)


FLOPS = Exercise(
    name="attention_flops",
    function="attention_flops",
    params=("B", "H", "N", "d"),
    lesson=LESSON,
    reference=_flops,
    cases=(
        Case(
            "small_layer",
            "B = 2, H = 3, N = 5, d = 7",
            lambda rng: (2, 3, 5, 7),
            seed=1001,
            secret=lambda rng: (
                draw_int(rng, 1, 4),
                draw_from(rng, (3, 5, 7)),
                draw_from(rng, (9, 11, 13)),
                draw_int(rng, 5, 10),
            ),
        ),
        Case(
            "lesson_layer",
            "B = 1, H = 8, N = 4096, d = 64: the lesson's layer",
            lambda rng: (1, 8, 4096, 64),
            seed=1002,
            secret=lambda rng: (
                1,
                draw_from(rng, (4, 8, 16)),
                draw_from(rng, (1024, 2048, 4096, 8192)),
                draw_from(rng, (32, 64, 128)),
            ),
        ),
        Case(
            "long_sequence",
            "B = 3, H = 12, N = 65536, d = 96: far beyond 2**31",
            lambda rng: (3, 12, 65536, 96),
            seed=1003,
            secret=lambda rng: (
                draw_int(rng, 2, 4),
                draw_int(rng, 8, 16),
                draw_from(rng, (32768, 65536, 131072)),
                draw_from(rng, (64, 96, 128)),
            ),
            points=2.0,
        ),
    ),
    mistakes=(
        Mistake(
            "2 instead of 4",
            "There are TWO matrix products (Q K^T and W V), each of N^2 d multiply-adds, and a multiply-add is "
            "2 FLOPs: 4 B H N^2 d in all.",
            lambda B, H, N, d: _flops(B, H, N, d, factor=2),
        ),
        Mistake(
            "N instead of N squared",
            "Every query meets every key: the scores are (N, N), so the count grows with N**2, not N.",
            lambda B, H, N, d: _flops(B, H, N, d, power=1),
        ),
        Mistake(
            "heads forgotten",
            "Each of the H heads has its own scores and output: multiply by H as well as by B.",
            lambda B, H, N, d: _flops(B, H, N, d, heads=False),
        ),
    ),
    hints={"type": TYPE_HINT, "shape": "Return a single number as a 0-d array: np.asarray(value, dtype=np.float64)."},
)


def _bytes(B, H, N, itemsize, *, power=2, heads=True, item=True):
    return _as_result(B * (H if heads else 1) * N**power * (itemsize if item else 1))


BYTES = Exercise(
    name="score_matrix_bytes",
    function="score_matrix_bytes",
    params=("B", "H", "N", "itemsize"),
    lesson=LESSON,
    reference=_bytes,
    cases=(
        Case(
            "small_float32",
            "B = 2, H = 3, N = 5, itemsize = 4",
            lambda rng: (2, 3, 5, 4),
            seed=1011,
            secret=lambda rng: (draw_int(rng, 1, 4), draw_from(rng, (3, 5, 7)), draw_from(rng, (9, 11, 13)), 4),
        ),
        Case(
            "long_float16",
            "B = 1, H = 8, N = 65536, itemsize = 2: the lesson's 64k tokens in half precision",
            lambda rng: (1, 8, 65536, 2),
            seed=1012,
            secret=lambda rng: (
                draw_int(rng, 1, 2),
                draw_from(rng, (8, 12, 16, 32)),
                draw_from(rng, (32768, 65536, 131072)),
                2,
            ),
            points=2.0,
        ),
        Case(
            "batched_float64",
            "B = 4, H = 6, N = 300, itemsize = 8",
            lambda rng: (4, 6, 300, 8),
            seed=1013,
            secret=lambda rng: (draw_int(rng, 3, 6), draw_from(rng, (3, 5, 6, 7)), draw_int(rng, 200, 500), 8),
        ),
    ),
    mistakes=(
        Mistake(
            "N instead of N squared",
            "A score matrix holds one number per (query, key) pair: N * N of them per head.",
            lambda B, H, N, itemsize: _bytes(B, H, N, itemsize, power=1),
        ),
        Mistake(
            "heads forgotten",
            "Each head has its own (N, N) score matrix: B * H of them in all.",
            lambda B, H, N, itemsize: _bytes(B, H, N, itemsize, heads=False),
        ),
        Mistake(
            "numbers, not bytes",
            "That is the count of numbers: multiply by itemsize, the bytes of one number (4 for float32).",
            lambda B, H, N, itemsize: _bytes(B, H, N, itemsize, item=False),
        ),
    ),
    hints={"type": TYPE_HINT, "shape": "Return a single number as a 0-d array: np.asarray(value, dtype=np.float64)."},
)


def _longest(memory_bytes, B, H, itemsize, *, heads=True, power=2, rounding="floor"):
    per_pair = B * (H if heads else 1) * itemsize  # bytes of one (query, key) pair over the batch and heads
    budget = memory_bytes // per_pair  # how many pairs fit per head and sequence
    if power == 1:
        return _as_result(budget)
    if rounding == "round":
        return _as_result(round(math.sqrt(memory_bytes / per_pair)))
    return _as_result(math.isqrt(budget))  # the largest N with N * N <= budget


LONGEST = Exercise(
    name="longest_sequence",
    function="longest_sequence",
    params=("memory_bytes", "B", "H", "itemsize"),
    lesson=LESSON,
    reference=_longest,
    cases=(
        Case(
            "one_gigabyte",
            "memory_bytes = 10**9, B = 2, H = 3, itemsize = 4",
            lambda rng: (10**9, 2, 3, 4),
            seed=1021,
            secret=longest_case([k * 10**8 for k in range(5, 21)], (1, 4), (2, 3, 4, 6), 4, rounds_up=True),
        ),
        Case(
            "one_gibibyte",
            "memory_bytes = 2**30, B = 1, H = 8, itemsize = 4",
            lambda rng: (2**30, 1, 8, 4),
            seed=1022,
            secret=longest_case([2**k for k in range(28, 33)], (1, 1), (4, 8, 16), 4, rounds_up=True),
        ),
        Case(
            "large_card",
            "memory_bytes = 141 * 10**9, B = 5, H = 32, itemsize = 2: a 141 GB card",
            lambda rng: (141 * 10**9, 5, 32, 2),
            seed=1023,
            secret=longest_case([k * 10**9 for k in range(40, 193)], (2, 8), (16, 24, 32, 48, 64), 2, rounds_up=False),
            points=2.0,
        ),
    ),
    mistakes=(
        Mistake(
            "N instead of N squared",
            "The scores grow with N * N: the memory fixes how many (query, key) pairs fit, and N is the square root "
            "of that number.",
            lambda m, B, H, i: _longest(m, B, H, i, power=1),
        ),
        Mistake(
            "heads forgotten",
            "Every head holds its own (N, N) score matrix: divide the memory by B * H * itemsize before taking the "
            "square root.",
            lambda m, B, H, i: _longest(m, B, H, i, heads=False),
        ),
        Mistake(
            "rounded up",
            "The scores must fit: take the largest N with B * H * N**2 * itemsize <= memory_bytes, the square root "
            "rounded down (math.isqrt), not to the nearest integer.",
            lambda m, B, H, i: _longest(m, B, H, i, rounding="round"),
        ),
    ),
    hints={
        "type": TYPE_HINT,
        "shape": "Return a single number as a 0-d array: np.asarray(value, dtype=np.float64).",
        "values": "Solve B * H * N**2 * itemsize <= memory_bytes for the largest whole N. math.isqrt(n) is the "
        "exact integer square root, rounded down.",
    },
)

EXERCISES = (FLOPS, BYTES, LONGEST)
