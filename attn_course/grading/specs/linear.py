"""Exercises of lesson 14, linear attention: ``solutions/14_linear_attention.ipynb``.

* ``elu_feature_map(x)``: ``phi(x) = elu(x) + 1``, i.e. ``x + 1`` for ``x > 0``
  and ``exp(x)`` otherwise; always positive;
* ``linear_attention(q, k, v)``: non-causal linear attention by the
  reordering ``phi(Q) (phi(K)^T V)``, normalised by ``phi(Q) sum_j phi(k_j)``;
* ``causal_linear_attention(q, k, v)``: query ``i`` uses keys ``j <= i`` only,
  by prefix sums of ``phi(k_j) v_j^T`` and ``phi(k_j)``;
* ``reorder_crossover(d, dv)`` (predict, then verify): the shortest length
  ``L`` (with ``S = L``) from which ``phi(Q) (phi(K)^T V)``, ``2 L d dv``
  multiply-adds, costs fewer than ``(phi(Q) phi(K)^T) V``, ``L^2 (d + dv)``.

References: ``attn_course.linear.elu_feature_map`` and
``attn_course.linear_attention`` (``causal=False`` / ``causal=True``); the
crossover is found by counting both products for L = 1, 2, ... .
"""

from __future__ import annotations

import numpy as np

from ...linear import elu_feature_map as reference_phi
from ...linear import linear_attention as reference_linear
from ..judge import Case, Exercise, Invariant, Mistake, format_index, format_number
from .inputs import normal_array
from .secret_inputs import crossover_case, with_unit
from .tiling import within_value_range

__all__ = ["EXERCISES"]

LESSON = "14_linear_attention"


def _elu_no_one(x):
    return np.where(x > 0, x, np.expm1(np.minimum(x, 0))).astype(x.dtype)


def _relu_plus_one(x):
    return (np.maximum(x, 0) + 1).astype(x.dtype)


def strictly_positive() -> Invariant:
    def violation(outputs, args, tol):
        out = outputs[0]
        bad = out <= 0
        if bool(np.any(bad)):
            first = np.argwhere(bad)[0]
            return f"entry {format_index(first)} is {format_number(out[tuple(first)])}"
        return None

    return Invariant("every feature is > 0 (so that the normaliser never vanishes)", violation)


def _array(shape, dtype=np.float32, spread=2.0):
    return lambda rng: ((rng.standard_normal(shape) * spread).astype(dtype),)


PHI = Exercise(
    name="elu_feature_map",
    function="elu_feature_map",
    params=("x",),
    lesson=LESSON,
    reference=reference_phi,
    cases=(
        Case("matrix", "x: float32 (4, 6), entries of both signs", _array((4, 6)), seed=401),
        Case("batched", "x: float32 (2, 3, 5), entries of both signs", _array((2, 3, 5)), seed=402),
        Case(
            "very_negative_float64",
            "x: float64 (7,), entries down to about -20",
            _array((7,), np.float64, 8.0),
            seed=403,
        ),
    ),
    # edge cases a learner never sees (the grader runs them after the public case of the same name passed)
    hidden={
        "matrix": (
            Case(
                "large_positive",
                "x: float32 (3, 5), entries up to about 300 with exact zeros: exp(x) overflows where x is large, "
                "the result is x + 1 there",
                lambda rng: (
                    (np.abs(rng.standard_normal((3, 5))) * 150 * (rng.random((3, 5)) < 0.7)).astype(np.float32),
                ),
                seed=3066,
            ),
        ),
    },
    invariants=(strictly_positive(),),
    mistakes=(
        Mistake(
            "elu without the + 1",
            "phi(x) = elu(x) + 1: without the + 1 the features can be negative or zero, and the normaliser "
            "phi(q) . sum phi(k) can vanish. For x > 0 it is x + 1, otherwise exp(x).",
            _elu_no_one,
        ),
        Mistake(
            "relu + 1",
            "For x <= 0, elu(x) + 1 is exp(x), not 1: the negative side decays smoothly towards 0.",
            _relu_plus_one,
        ),
        Mistake(
            "exp everywhere",
            "For x > 0, elu(x) + 1 is x + 1 (it grows linearly), not exp(x).",
            lambda x: np.exp(x).astype(x.dtype),
        ),
    ),
    hints={
        "dtype": "Keep x's dtype: np.where(x > 0, x + 1, np.exp(x)) does; a Python 1 does not change it.",
        "nonfinite": "np.where evaluates both branches: np.exp(x) of a large positive x overflows. Take "
        "np.exp(np.minimum(x, 0)) for the negative branch.",
    },
)


# --------------------------------------------------------------------------- linear attention


def _phi(x):
    return np.where(x > 0, x + 1, np.exp(np.minimum(x, 0)))


def _linear(q, k, v, *, phi=_phi, normalise=True, causal=False, strict=False):
    pq, pk = phi(q), phi(k)
    if causal:
        L, S = q.shape[-2], k.shape[-2]
        allowed = np.tril(np.ones((L, S), dtype=bool), k=-1 if strict else 0)
        sim = np.where(allowed, pq @ np.swapaxes(pk, -1, -2), 0.0)
    else:
        sim = pq @ np.swapaxes(pk, -1, -2)
    num = sim @ v
    if not normalise:
        return num.astype(q.dtype)
    den = sim.sum(axis=-1, keepdims=True)
    return (num / np.where(den > 0, den, 1.0)).astype(q.dtype)


def _shifted_prefix(q, k, v):
    """Causal linear attention whose prefix sums stop before row i: row 0 divides 0 by 0 (NaN)."""
    pq, pk = _phi(q), _phi(k)
    L = q.shape[-2]
    allowed = np.tril(np.ones((L, L), dtype=bool), k=-1)
    sim = np.where(allowed, pq @ np.swapaxes(pk, -1, -2), 0.0)
    return ((sim @ v) / sim.sum(axis=-1, keepdims=True)).astype(q.dtype)


def _softmax_attention(q, k, v, causal=False):
    s = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
    if causal:
        s = np.where(np.tril(np.ones(s.shape[-2:], dtype=bool)), s, -np.inf)
    w = np.exp(s - s.max(axis=-1, keepdims=True))
    return (w / w.sum(axis=-1, keepdims=True) @ v).astype(q.dtype)


def _qkv(batch, L, S, d, dv, dtype=np.float32):
    def make(rng):
        return (
            normal_array(rng, (*batch, L, d), dtype),
            normal_array(rng, (*batch, S, d), dtype),
            normal_array(rng, (*batch, S, dv), dtype),
        )

    return make


LINEAR = Exercise(
    name="linear_attention",
    function="linear_attention",
    params=("q", "k", "v"),
    lesson=LESSON,
    reference=reference_linear,
    cases=(
        Case("cross", "q: float32 (5, 4), k: (7, 4), v: (7, 3)", _qkv((), 5, 7, 4, 3), seed=411, points=2.0),
        Case(
            "batched_heads",
            "q: float32 (2, 3, 6, 5), k: (2, 3, 8, 5), v: (2, 3, 8, 2)",
            _qkv((2, 3), 6, 8, 5, 2),
            seed=412,
        ),
        Case("float64", "q: float64 (9, 2), k: (4, 2), v: (4, 6)", _qkv((), 9, 4, 2, 6, np.float64), seed=413),
    ),
    hidden={
        "cross": (
            Case(
                "one_key",
                "q: float32 (4, 3), k: (1, 3), v: (1, 5): a single key, every query returns its value",
                _qkv((), 4, 1, 3, 5),
                seed=3067,
            ),
            Case(
                "one_query_one_feature",
                "q: float32 (1, 1), k: (6, 1), v: (6, 2): a single query, d = 1",
                _qkv((), 1, 6, 1, 2),
                seed=3068,
            ),
        ),
    },
    invariants=(within_value_range(),),
    mistakes=(
        Mistake(
            "no normaliser",
            "Divide by phi(q_i) . sum_j phi(k_j), the sum of the similarities of row i: without it the output "
            "is not an average of the values.",
            lambda q, k, v: _linear(q, k, v, normalise=False),
        ),
        Mistake(
            "elu without the + 1",
            "The feature map is elu(x) + 1, not elu(x): its features must be positive.",
            lambda q, k, v: _linear(q, k, v, phi=lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0)))),
        ),
        Mistake(
            "no feature map",
            "Apply phi = elu + 1 to q and to k before multiplying: raw dot products can be negative.",
            lambda q, k, v: _linear(q, k, v, phi=lambda x: x),
        ),
        Mistake(
            "softmax attention",
            "This is softmax attention. Linear attention replaces exp(q . k / sqrt(d)) by phi(q) . phi(k), with "
            "no scale and no softmax.",
            _softmax_attention,
        ),
    ),
    hints={
        "shape": "phi(K)^T V is (..., d, dv) and sum_j phi(k_j) is (..., d); the output is (..., L, dv).",
        "dtype": "Keep q's dtype: float32 in, float32 out (.astype(q.dtype) at the end).",
        "raised": "Transpose only the last two axes: np.swapaxes(phi_k, -1, -2) @ v is (..., d, dv).",
    },
)


def first_row_is_first_value() -> Invariant:
    def violation(outputs, args, tol):
        out, v = outputs[0], np.asarray(args[2], dtype=np.float64)
        diff = np.abs(out[..., 0, :] - v[..., 0, :])
        bad = diff > 10 * tol["atol"] + tol["rtol"] * np.abs(v[..., 0, :])
        if bool(np.any(bad)):
            first = np.argwhere(bad)[0]
            return f"output row 0 {format_index(first)} is {format_number(out[..., 0, :][tuple(first)])}, not v[0]"
        return None

    return Invariant("query 0 may see key 0 only: its output is v[0]", violation)


CAUSAL = Exercise(
    name="causal_linear_attention",
    function="causal_linear_attention",
    params=("q", "k", "v"),
    lesson=LESSON,
    reference=lambda q, k, v: reference_linear(q, k, v, causal=True),
    cases=(
        Case("sequence", "q, k: float32 (6, 4), v: (6, 3)", _qkv((), 6, 6, 4, 3), seed=421, points=2.0),
        Case("batched_heads", "q, k: float32 (2, 3, 7, 5), v: (2, 3, 7, 2)", _qkv((2, 3), 7, 7, 5, 2), seed=422),
        Case("float64", "q, k: float64 (9, 2), v: (9, 4)", _qkv((), 9, 9, 2, 4, np.float64), seed=423),
    ),
    hidden={
        "sequence": (
            Case(
                "one_position",
                "q, k: float32 (1, 3), v: (1, 4): a single position, which returns its own value",
                _qkv((), 1, 1, 3, 4),
                seed=3069,
            ),
        ),
        "batched_heads": (
            Case(
                "batch_of_one",
                "q, k: float32 (1, 5, 4), v: (1, 5, 3): a batch axis of size 1",
                _qkv((1,), 5, 5, 4, 3),
                seed=3070,
            ),
        ),
    },
    invariants=(within_value_range(), first_row_is_first_value()),
    mistakes=(
        Mistake(
            "future keys included",
            "Query i may use keys j <= i only: the prefix sums up to and including row i (np.cumsum over the "
            "key axis), not the sums over all keys.",
            _linear,
        ),
        Mistake(
            "prefix sums shifted by one",
            "The prefix sums at row i must include term i: an exclusive sum (np.cumsum(...) - term, or a sum shifted "
            "down one row) leaves row 0 with nothing at all, and 0 / 0 is NaN there. Use the inclusive np.cumsum.",
            _shifted_prefix,
        ),
        Mistake(
            "own key excluded",
            "Query i sees keys j <= i, its own key included: the prefix sum at row i includes term i (an "
            "inclusive np.cumsum, not shifted by one).",
            lambda q, k, v: _linear(q, k, v, causal=True, strict=True),
        ),
        Mistake(
            "no normaliser",
            "Divide by phi(q_i) . sum_{j <= i} phi(k_j), the prefix sum of the key features.",
            lambda q, k, v: _linear(q, k, v, causal=True, normalise=False),
        ),
        Mistake(
            "elu without the + 1",
            "The feature map is elu(x) + 1, not elu(x): its features must be positive.",
            lambda q, k, v: _linear(q, k, v, causal=True, phi=lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0)))),
        ),
    ),
    hints={
        "shape": "The prefix sums of phi(k_j) v_j^T are (..., L, d, dv): phi(k)[..., :, None] * v[..., None, :], "
        "then np.cumsum over axis -3.",
        "dtype": "Keep q's dtype: float32 in, float32 out (.astype(q.dtype) at the end).",
        "nonfinite": "A normaliser of 0 gives NaN. With elu + 1 every feature is positive, so phi(q_i) . z_i is 0 only "
        "when z_i sums nothing: check that the prefix sums at row i include row i itself, then the feature map.",
    },
)


# --------------------------------------------------------------------------- which order is cheaper (predict)


def _crossover(d, dv, *, products=2, strict=True):
    """The smallest L with ``products * L * d * dv`` multiply-adds below ``L * L * (d + dv)``; a 0-d float64 array."""
    L = 1
    while True:
        linear, quadratic = products * L * d * dv, L * L * (d + dv)
        if linear < quadratic or (not strict and linear <= quadratic):
            return np.asarray(float(L), dtype=np.float64)
        L += 1


CROSSOVER = Exercise(
    name="reorder_crossover",
    function="reorder_crossover",
    params=("d", "dv"),
    lesson=LESSON,
    reference=_crossover,
    cases=(
        Case(
            "small_heads",
            "d = 4, dv = 6",
            lambda rng: (4, 6),
            seed=431,
            secret=crossover_case(range(3, 7), range(7, 10)),
        ),
        Case(
            "equal_sizes",
            "d = 64, dv = 64: a tie at L = 64",
            lambda rng: (64, 64),
            seed=432,
            secret=with_unit((16, 32, 48, 96, 128), lambda rng, d: (d, d)),
            points=2.0,
        ),
        Case(
            "wide_values",
            "d = 3, dv = 7",
            lambda rng: (3, 7),
            seed=433,
            secret=crossover_case(range(2, 5), range(6, 11)),
        ),
        Case(
            "wide_queries",
            "d = 128, dv = 32",
            lambda rng: (128, 32),
            seed=434,
            secret=crossover_case((64, 96, 128), (16, 24, 32)),
        ),
    ),
    mistakes=(
        Mistake(
            "one product counted",
            "Each order makes TWO matrix products. phi(K)^T V costs L d dv, and phi(Q) times that (d, dv) matrix "
            "another L d dv: 2 L d dv against L^2 d + L^2 dv.",
            lambda d, dv: _crossover(d, dv, products=1),
        ),
        Mistake(
            "a tie counted as cheaper",
            "From L on, the reordering must cost FEWER multiply-adds: at a tie both orders cost the same, so the "
            "next length is the first that saves.",
            lambda d, dv: _crossover(d, dv, strict=False),
        ),
    ),
    hints={
        "type": "Return a 0-d NumPy float64 array: np.asarray(float(L), dtype=np.float64).",
        "shape": "Return a single number as a 0-d array: np.asarray(float(L), dtype=np.float64).",
        "values": "An (a, b) @ (b, c) product costs a * b * c multiply-adds. Write the cost of both orders as a "
        "function of L and find the first L where the reordered one is smaller; integers avoid rounding trouble.",
    },
)

EXERCISES = (PHI, LINEAR, CAUSAL, CROSSOVER)
