"""Exercises of lesson 01, dot products as similarity: ``solutions/01_dot_products_as_similarity.ipynb``.

* ``dot_product_similarity(q, k)``: every query against every key, ``q k^T``,
  shape ``(..., L, S)``, no scaling;
* ``cosine_similarity(q, k)``: the same comparison with the lengths divided
  out, ``q_i . k_j / (|q_i| |k_j|)``, every entry in ``[-1, 1]``;
* ``dot_product_spread(d, sigma)`` (predict, then verify): the standard
  deviation of ``q . k`` for two independent vectors of ``d`` entries drawn
  from ``N(0, sigma^2)``: ``sigma^2 sqrt(d)`` (the ``d`` products of spread
  ``sigma^2`` are independent, so their variances add up to ``d sigma^4``).
  Returned as a 0-d float64 array (the grader records arrays only).

The package has no function of its own for these (it only uses ``q k^T``
inside ``scaled_dot_product_attention``), so the references are the plain
formulas, evaluated in float64 at check time. Inputs use ``L=3, S=5, d=4``
and other distinct sizes.
"""

from __future__ import annotations

import math

import numpy as np

from ..judge import Case, Exercise, Invariant, Mistake, format_index, format_number
from .inputs import normal_array
from .secret_inputs import draw_float, draw_int

__all__ = ["EXERCISES"]

LESSON = "01_dot_products_as_similarity"


def _keys_transposed(k):
    return np.swapaxes(k, -1, -2)


def _dot(q, k):
    return q @ _keys_transposed(k)


def _unit(x, axis=-1):
    return x / np.linalg.norm(x, axis=axis, keepdims=True)


def _cosine(q, k):
    return _unit(q) @ _keys_transposed(_unit(k))


def _qk(L, S, d, batch=(), dtype=np.float32, key_lengths=None):
    """Queries (..., L, d) and keys (..., S, d); ``key_lengths`` rescales key j to that length."""

    def make(rng):
        q = normal_array(rng, (*batch, L, d), dtype)
        k = normal_array(rng, (*batch, S, d), dtype)
        if key_lengths is not None:
            k = (_unit(k.astype(np.float64)) * np.asarray(key_lengths, dtype=np.float64)[:, None]).astype(dtype)
        return q, k

    return make


DOT = Exercise(
    name="dot_product_similarity",
    function="dot_product_similarity",
    params=("q", "k"),
    lesson=LESSON,
    reference=_dot,
    cases=(
        Case("single", "q: float32 (3, 4), k: float32 (5, 4)", _qk(3, 5, 4), seed=101),
        Case("batched", "q: float32 (2, 3, 4), k: float32 (2, 5, 4)", _qk(3, 5, 4, batch=(2,)), seed=102),
        Case("float64", "q: float64 (6, 7), k: float64 (2, 7)", _qk(6, 2, 7, dtype=np.float64), seed=103),
    ),
    # edge cases a learner never sees (the grader runs them after the public case of the same name passed)
    hidden={
        "single": (
            Case(
                "one_query_one_feature",
                "q: float32 (1, 1), k: float32 (6, 1): a single query with a single feature",
                _qk(1, 6, 1),
                seed=3001,
            ),
        ),
        "batched": (
            Case(
                "two_batch_axes",
                "q: float32 (2, 3, 4, 5), k: float32 (2, 3, 7, 5): two leading batch axes",
                _qk(4, 7, 5, batch=(2, 3)),
                seed=3002,
            ),
        ),
    },
    mistakes=(
        Mistake(
            "keys times queries",
            "The result has one row per query and one column per key: q @ k^T, shape (..., L, S). "
            "k @ q^T gives (..., S, L).",
            lambda q, k: _dot(k, q),
        ),
        Mistake(
            "scaled by sqrt(d)",
            "This lesson's similarity is the plain dot product, with no scaling: dividing by sqrt(d) "
            "comes in lesson 03.",
            lambda q, k: _dot(q, k) / math.sqrt(q.shape[-1]),
        ),
        Mistake(
            "cosine instead of the dot product",
            "The dot product keeps the lengths of the vectors: do not divide by the norms (that is the cosine "
            "similarity of exercise 2).",
            _cosine,
        ),
    ),
    hints={
        "raised": "For batched inputs transpose only the last two axes of k: np.swapaxes(k, -1, -2) "
        "(k.T reverses every axis, the batch axis included).",
        "shape": "q (..., L, d) @ k^T (..., d, S) gives (..., L, S): L queries (q.shape[-2]) by S keys (k.shape[-2]).",
    },
)


# --------------------------------------------------------------------------- cosine


def within_minus_one_and_one() -> Invariant:
    """Every entry of the result lies in [-1, 1]."""

    def violation(outputs, args, tol):
        cosines = outputs[0]
        bad = np.abs(cosines) > 1 + tol["atol"] + tol["rtol"]
        if bool(np.any(bad)):
            first = np.argwhere(bad)[0]
            return f"entry {format_index(first)} is {format_number(cosines[tuple(first)])}"
        return None

    return Invariant("every cosine lies between -1 and 1", violation)


COSINE = Exercise(
    name="cosine_similarity",
    function="cosine_similarity",
    params=("q", "k"),
    lesson=LESSON,
    reference=_cosine,
    cases=(
        Case("single", "q: float32 (3, 4), k: float32 (5, 4)", _qk(3, 5, 4), seed=104),
        Case(
            "keys_of_different_lengths",
            "q: float32 (3, 4), k: float32 (5, 4) with lengths from 0.01 to 100",
            _qk(3, 5, 4, key_lengths=[0.01, 1.0, 100.0, 0.5, 7.0]),
            seed=105,
            points=2.0,
        ),
        Case("batched_float64", "q: float64 (2, 6, 3), k: float64 (2, 4, 3)", _qk(6, 4, 3, (2,), np.float64), seed=106),
    ),
    hidden={
        "single": (
            Case(
                "one_query",
                "q: float32 (1, 5), k: float32 (6, 5): a single query",
                _qk(1, 6, 5),
                seed=3003,
            ),
            Case(
                "one_feature",
                "q: float32 (4, 1), k: float32 (3, 1): vectors of one feature, every cosine is -1 or 1",
                _qk(4, 3, 1),
                seed=3004,
            ),
        ),
        "batched_float64": (
            Case(
                "two_batch_axes",
                "q: float64 (3, 2, 5, 4), k: float64 (3, 2, 7, 4): two leading batch axes",
                _qk(5, 7, 4, (3, 2), np.float64),
                seed=3005,
            ),
        ),
    },
    invariants=(within_minus_one_and_one(),),
    mistakes=(
        Mistake(
            "keys not normalised",
            "Divide the keys by their lengths too: cos(q_i, k_j) = q_i . k_j / (|q_i| |k_j|). "
            "Only the queries are normalised here, so long keys still win.",
            lambda q, k: _unit(q) @ _keys_transposed(k),
        ),
        Mistake(
            "queries not normalised",
            "Divide the queries by their lengths too: cos(q_i, k_j) = q_i . k_j / (|q_i| |k_j|).",
            lambda q, k: q @ _keys_transposed(_unit(k)),
        ),
        Mistake(
            "norms along the wrong axis",
            "Each vector is a row: its length is np.linalg.norm(x, axis=-1, keepdims=True), over the d features, "
            "not over the L or S positions.",
            lambda q, k: _unit(q, axis=-2) @ _keys_transposed(_unit(k, axis=-2)),
        ),
        Mistake(
            "lengths of the whole arrays",
            "np.linalg.norm(q) without an axis is the length of the whole array, one number. Each query and each "
            "key needs its own length: np.linalg.norm(q, axis=-1, keepdims=True).",
            lambda q, k: _dot(q, k) / (np.linalg.norm(q) * np.linalg.norm(k)),
        ),
        Mistake(
            "plain dot product",
            "The cosine divides every dot product q_i . k_j by the lengths |q_i| and |k_j|, so that only the "
            "angle counts.",
            _dot,
        ),
    ),
    hints={
        "raised": "For batched inputs transpose only the last two axes: np.swapaxes(k, -1, -2).",
        "shape": "The result is (..., L, S), like the dot products: one row per query, one column per key.",
        "values": "Normalise every query row and every key row to length 1 first (x / its norm over the last "
        "axis, keepdims=True), then take their dot products.",
    },
)


# --------------------------------------------------------------------------- how far dot products spread


def _spread(d, sigma, *, sigma_power=2, d_power=0.5):
    return np.asarray(float(sigma) ** sigma_power * float(d) ** d_power, dtype=np.float64)


SPREAD_TYPE_HINT = (
    "Return a 0-d NumPy float64 array, not a Python number or a NumPy scalar: "
    "return np.asarray(value, dtype=np.float64)."
)

SPREAD = Exercise(
    name="dot_product_spread",
    function="dot_product_spread",
    params=("d", "sigma"),
    lesson=LESSON,
    reference=_spread,
    cases=(
        Case(
            "short_vectors",
            "d = 4, sigma = 1.5",
            lambda rng: (4, 1.5),
            seed=107,
            secret=lambda rng: (draw_int(rng, 2, 16), draw_float(rng, 1.2, 3.0)),
        ),
        Case(
            "small_entries",
            "d = 64, sigma = 0.5",
            lambda rng: (64, 0.5),
            seed=108,
            secret=lambda rng: (draw_int(rng, 32, 128), draw_float(rng, 0.45, 0.8)),
        ),
        Case(
            "long_vectors",
            "d = 300, sigma = 2.0",
            lambda rng: (300, 2.0),
            seed=109,
            secret=lambda rng: (draw_int(rng, 200, 500), draw_float(rng, 1.5, 3.0)),
        ),
    ),
    mistakes=(
        Mistake(
            "grows like d",
            "The d products q_c k_c are independent, so their VARIANCES add up (d sigma^4), not their standard "
            "deviations: the spread is the square root of the variance and grows like sqrt(d).",
            lambda d, sigma: _spread(d, sigma, d_power=1.0),
        ),
        Mistake(
            "variance instead of standard deviation",
            "d sigma^4 is the variance of q . k; the spread asked for is its standard deviation, the square root.",
            lambda d, sigma: _spread(d, sigma, sigma_power=4, d_power=1.0),
        ),
        Mistake(
            "sigma once",
            "Each term q_c k_c multiplies two numbers of spread sigma: its spread is sigma * sigma = sigma^2, "
            "so the answer carries sigma^2, not sigma.",
            lambda d, sigma: _spread(d, sigma, sigma_power=1),
        ),
    ),
    hints={
        "type": SPREAD_TYPE_HINT,
        "shape": "Return a single number as a 0-d array: np.asarray(value, dtype=np.float64).",
        "values": "Work out the mean and the variance of ONE product q_c k_c of two independent N(0, sigma^2) "
        "numbers first; then add up d independent such terms.",
    },
)

EXERCISES = (DOT, COSINE, SPREAD)
