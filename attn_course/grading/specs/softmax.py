"""Exercises of lesson 02, softmax, temperature and scaling: ``solutions/02_softmax_temperature_and_scaling.ipynb``.

* ``softmax(x)``: the numerically stable softmax over the last axis;
* ``softmax_with_temperature(x, temperature)``: ``softmax(x / T)``;
* ``masked_softmax(x, mask)``: masked entries get weight 0, a row that keeps
  nothing gets all zeros (never NaN);
* ``entropy_limits(x)`` (predict, then verify): the entropy (in nats) of the
  weights ``softmax(x / T)`` of each row in the two limits: ``T -> 0`` leaves
  the weight spread evenly over the entries tied for the row's maximum,
  ``log(number of maxima)``; ``T -> infinity`` spreads it over all ``n``
  entries, ``log(n)``. Two float64 arrays of shape ``x.shape[:-1]``.

References are ``attn_course.softmax``; the mistakes below are the classic wrong
versions, written plainly so that a failing answer can be told which one it is.
"""

from __future__ import annotations

import numpy as np

from ...softmax import softmax as reference_softmax
from ...tolerances import tolerance_for
from ..judge import Case, Exercise, Mistake, rows_sum_to_one, within_zero_and_one, zero_where_masked
from .inputs import keep_mask
from .secret_inputs import redrawn

__all__ = ["EXERCISES"]

LESSON = "02_softmax_temperature_and_scaling"


def _scores(rng, shape, dtype=np.float32, spread=2.0, offsets=None):
    """Standard-normal scores times ``spread``, plus one offset per row if given."""
    x = rng.standard_normal(shape) * spread
    if offsets is not None:
        x = x + np.asarray(offsets, dtype=np.float64)[:, None]
    return x.astype(dtype)


# --------------------------------------------------------------------------- the wrong versions


def _naive(x):
    exps = np.exp(x)
    return exps / exps.sum(axis=-1, keepdims=True)


def _global_max(x):
    exps = np.exp(x - x.max())
    return exps / exps.sum(axis=-1, keepdims=True)


def _whole_sum(x):
    exps = np.exp(x - x.max(axis=-1, keepdims=True))
    return exps / exps.sum()


def _first_axis(x):
    exps = np.exp(x - x.max(axis=0, keepdims=True))
    return exps / exps.sum(axis=0, keepdims=True)


NO_SHIFT = (
    "exp() overflows for large scores (exp(1000) is inf, and inf / inf is NaN) and underflows for very "
    "negative ones (0 / 0). Subtract each row's maximum before exp(): the result is mathematically the same."
)

SOFTMAX = Exercise(
    name="softmax",
    function="softmax",
    params=("x",),
    lesson=LESSON,
    reference=lambda x: reference_softmax(x, axis=-1),
    cases=(
        Case("rows", "x: float32 (3, 5), ordinary scores", lambda rng: (_scores(rng, (3, 5)),), seed=20),
        Case("batched", "x: float32 (2, 3, 5), a batch of score rows", lambda rng: (_scores(rng, (2, 3, 5)),), seed=21),
        Case(
            "large_scores",
            "x: float32 (3, 5), rows around +1000, -1000 and 0",
            lambda rng: (_scores(rng, (3, 5), spread=3.0, offsets=[1000.0, -1000.0, 0.0]),),
            seed=22,
            points=2.0,
        ),
        Case(
            "float64_input",
            "x: float64 (4, 6): the dtype must be kept",
            lambda rng: (_scores(rng, (4, 6), dtype=np.float64),),
            seed=23,
        ),
    ),
    # edge cases a learner never sees (the grader runs them after the public case of the same name passed)
    hidden={
        "rows": (
            Case(
                "one_key",
                "x: float32 (4, 1): one key per row, weight 1",
                lambda rng: (_scores(rng, (4, 1)),),
                seed=2001,
            ),
            Case(
                "one_row", "x: float32 (7,): a single row, no batch axis", lambda rng: (_scores(rng, (7,)),), seed=2002
            ),
            Case(
                "tied_rows",
                "x: float32 (3, 6): every score of a row equal, uniform weights",
                lambda rng: (np.repeat(_scores(rng, (3, 1)), 6, axis=1),),
                seed=2003,
            ),
        ),
    },
    invariants=(within_zero_and_one(), rows_sum_to_one()),
    mistakes=(
        Mistake("no max shift", NO_SHIFT, _naive),
        Mistake(
            "maximum of the whole array",
            "You subtracted the maximum of the whole array. A row far below it underflows to all zeros "
            "(0 / 0 = NaN): subtract each row's own maximum, x.max(axis=-1, keepdims=True).",
            _global_max,
        ),
        Mistake(
            "sum of the whole array",
            "Each row must be divided by its own sum, .sum(axis=-1, keepdims=True), not by the sum of everything.",
            _whole_sum,
        ),
        Mistake(
            "wrong axis",
            "The softmax runs along the last axis (axis=-1): each row of scores becomes a row of weights.",
            _first_axis,
        ),
    ),
    hints={
        "nonfinite": NO_SHIFT,
        "raised": "Reductions need keepdims=True (or [..., None]) to broadcast back against x.",
    },
)


# --------------------------------------------------------------------------- temperature


def _float32_stable_agrees(x, temperature) -> bool:
    """A stable float32 softmax of ``x / temperature`` is within float32's tolerance of the float64 reference."""
    weights = reference_softmax(x / np.float32(temperature), axis=-1)  # float32 throughout, as a learner's
    expected = reference_softmax(x.astype(np.float64) / temperature, axis=-1)
    return bool(np.allclose(weights, expected, **tolerance_for(np.float32)))


def _temperature_case(shape, temperature, spread=2.0, offsets=None):
    return lambda rng: (_scores(rng, shape, spread=spread, offsets=offsets), temperature)


TEMPERATURE = Exercise(
    name="softmax_with_temperature",
    function="softmax_with_temperature",
    params=("x", "temperature"),
    lesson=LESSON,
    reference=lambda x, temperature: reference_softmax(x / temperature, axis=-1),
    cases=(
        Case("sharpen", "x: float32 (3, 5), temperature 0.5", _temperature_case((3, 5), 0.5), seed=24),
        Case("flatten", "x: float32 (2, 3, 5), temperature 2.0", _temperature_case((2, 3, 5), 2.0), seed=25),
        Case(
            "cold_and_large",
            "x: float32 (3, 5) around 100, temperature 0.1 (scores / T near 1000)",
            _temperature_case((3, 5), 0.1, offsets=[100.0, 90.0, -100.0]),
            seed=26,
            # the case tests stability, not the luck of float32 rounding: near-ties at scores of 1000 can put an
            # honest float32 answer outside float32's tolerance, so the secret draw keeps only draws where it is not
            secret=redrawn(_temperature_case((3, 5), 0.1, offsets=[100.0, 90.0, -100.0]), _float32_stable_agrees),
        ),
    ),
    hidden={
        "sharpen": (
            Case(
                "one_key",
                "x: float32 (4, 1), temperature 0.5: one key per row, weight 1 at any temperature",
                _temperature_case((4, 1), 0.5),
                seed=3006,
            ),
        ),
        "flatten": (
            Case(
                "two_batch_axes_float64",
                "x: float64 (2, 3, 4, 6), temperature 3.0: two leading batch axes, float64 kept",
                lambda rng: (_scores(rng, (2, 3, 4, 6), dtype=np.float64), 3.0),
                seed=3007,
            ),
        ),
    },
    invariants=(within_zero_and_one(), rows_sum_to_one()),
    mistakes=(
        Mistake(
            "multiplied by the temperature",
            "Divide the scores by the temperature, do not multiply: T > 1 must flatten the weights, "
            "T < 1 sharpen them.",
            lambda x, t: reference_softmax(x * t),
        ),
        Mistake(
            "temperature applied to the weights",
            "Apply the temperature to the scores, before the softmax: softmax(x / T). "
            "Dividing the weights afterwards breaks the sum to 1.",
            lambda x, t: reference_softmax(x) / t,
        ),
        Mistake(
            "temperature ignored",
            "The temperature is not used: the scores must be divided by it before the softmax.",
            lambda x, t: reference_softmax(x),
        ),
        Mistake("no max shift", NO_SHIFT, lambda x, t: _naive(x / t)),
    ),
    hints={"nonfinite": NO_SHIFT},
)


# --------------------------------------------------------------------------- masked softmax


def _masked_case(shape, mask_shape=None, spread=2.0, offsets=None, empty_rows=()):
    def make(rng):
        x = _scores(rng, shape, spread=spread, offsets=offsets)
        return x, keep_mask(rng, mask_shape or shape, empty_rows=empty_rows)

    return make


def _nan_when_empty(x, mask):
    scores = np.where(mask, x, -np.inf)
    exps = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return exps / exps.sum(axis=-1, keepdims=True)


def _big_negative(x, mask):
    return reference_softmax(np.where(mask, x, -1e9).astype(x.dtype))


MASKED = Exercise(
    name="masked_softmax",
    function="masked_softmax",
    params=("x", "mask"),
    lesson=LESSON,
    reference=lambda x, mask: reference_softmax(x, axis=-1, mask=mask),
    cases=(
        Case("some_masked", "x: float32 (3, 5), mask: bool (3, 5)", _masked_case((3, 5)), seed=27),
        Case(
            "broadcast_mask",
            "x: float32 (2, 3, 5), mask: bool (3, 5) shared by the batch",
            _masked_case((2, 3, 5), mask_shape=(3, 5)),
            seed=28,
        ),
        Case(
            "row_fully_masked",
            "x: float32 (3, 5), mask: bool (3, 5) whose row 1 keeps nothing",
            _masked_case((3, 5), empty_rows=(1,)),
            seed=29,
        ),
        Case(
            "large_scores",
            "x: float32 (3, 5) around 1000, mask: bool (3, 5)",
            _masked_case((3, 5), spread=3.0, offsets=[1000.0, 1000.0, -1000.0]),
            seed=30,
            # the row around -1000 masks something out: there 0 * score is no -inf (as in the public draw)
            secret=redrawn(
                _masked_case((3, 5), spread=3.0, offsets=[1000.0, 1000.0, -1000.0]), lambda x, mask: not mask[2].all()
            ),
        ),
    ),
    hidden={
        "broadcast_mask": (
            Case(
                "mask_over_two_batch_axes",
                "x: float32 (2, 3, 4, 6), mask: bool (4, 6) shared by both batch axes",
                _masked_case((2, 3, 4, 6), mask_shape=(4, 6)),
                seed=3008,
            ),
        ),
        "some_masked": (
            Case(
                "one_key_kept",
                "x: float32 (4, 6), mask: bool (4, 6) keeping exactly one key per row",
                lambda rng: (_scores(rng, (4, 6)), np.eye(6, dtype=bool)[rng.integers(0, 6, 4)]),
                seed=2004,
            ),
        ),
    },
    invariants=(zero_where_masked(0, 1), within_zero_and_one(), rows_sum_to_one(0, mask_arg=1)),
    mistakes=(
        Mistake(
            "mask applied after the softmax",
            "Mask the scores before the softmax (a masked score becomes -inf), so that the kept entries are "
            "renormalised to sum to 1. Zeroing weights after the softmax leaves rows that sum to less than 1.",
            lambda x, mask: reference_softmax(x) * mask,
        ),
        Mistake(
            "scores multiplied by the mask",
            "Multiplying the scores by the mask turns a masked score into 0, not -inf, so it still gets weight. "
            "Replace masked scores by -inf instead (np.where).",
            lambda x, mask: reference_softmax(x * mask),
        ),
        Mistake(
            "mask inverted",
            "The mask is True where an entry is kept (may attend) and False where it is removed.",
            lambda x, mask: reference_softmax(x, mask=~mask),
        ),
        Mistake(
            "large negative number instead of -inf",
            "With a large negative number instead of -inf, a row whose mask keeps nothing gets equal weights "
            "everywhere. Such a row must be all zeros.",
            _big_negative,
        ),
        Mistake(
            "NaN in rows that keep nothing",
            "In a row whose mask keeps nothing, the maximum is -inf and -inf - (-inf) is NaN, then 0 / 0. "
            "Treat such rows apart: their weights are all 0.",
            _nan_when_empty,
        ),
    ),
    hints={
        "nonfinite": "A row whose mask keeps nothing must get all-zero weights, and large scores need the "
        "maximum subtracted first; one of the two gives NaN here."
    },
)

# --------------------------------------------------------------------------- entropy at the two ends of T


def _entropy_limits(x, *, ties=True, log=np.log):
    """``(cold, hot)``: the entropy of softmax(x / T) per row as T -> 0 and as T -> infinity."""
    x = np.asarray(x)
    top = (x == x.max(axis=-1, keepdims=True)).sum(axis=-1)  # (...,): entries tied for the maximum
    cold = log(top.astype(np.float64)) if ties else np.zeros(x.shape[:-1])
    hot = np.full(x.shape[:-1], log(float(x.shape[-1])))
    return np.asarray(cold, dtype=np.float64), np.asarray(hot, dtype=np.float64)


def _tied_scores(shape, dtype, top=3):
    """Whole-number scores from 0 to ``top``, so that rows often tie for their maximum."""

    def make(rng):
        x = rng.integers(0, top + 1, size=shape).astype(dtype)
        x.reshape(-1, shape[-1])[0] = 1  # one row with every entry tied
        return (x,)

    return make


ENTROPY = Exercise(
    name="entropy_limits",
    function="entropy_limits",
    params=("x",),
    lesson=LESSON,
    reference=_entropy_limits,
    outputs=("cold", "hot"),
    cases=(
        Case(
            "ties",
            "x: float32 (4, 7), whole numbers 0 to 3, so that rows tie for their maximum; row 0 all equal",
            _tied_scores((4, 7), np.float32),
            seed=131,
        ),
        Case(
            "batched_float64",
            "x: float64 (2, 3, 5), whole numbers 0 to 2",
            _tied_scores((2, 3, 5), np.float64, top=2),
            seed=132,
        ),
        Case(
            "no_ties",
            "x: float32 (6, 9), normal scores (one maximum per row), row 0 all equal",
            lambda rng: (_with_flat_first_row(_scores(rng, (6, 9))),),
            seed=133,
        ),
    ),
    hidden={
        "ties": (
            Case(
                "one_entry_per_row",
                "x: float32 (5, 1): one entry per row, both entropies are 0",
                _tied_scores((5, 1), np.float32),
                seed=3009,
            ),
        ),
    },
    mistakes=(
        Mistake(
            "ties ignored",
            "As T -> 0 the weight goes to the LARGEST scores, all of them: a row whose maximum appears m times "
            "ends with weight 1/m on each, and its entropy is log(m), not 0.",
            lambda x: _entropy_limits(x, ties=False),
        ),
        Mistake(
            "limits swapped",
            "A cold temperature (T -> 0) makes the scores x / T huge, so the largest ones take all the weight: "
            "low entropy. A hot one (T -> infinity) makes every x / T near 0: equal weights, entropy log(n).",
            lambda x: _entropy_limits(x)[::-1],
        ),
        Mistake(
            "bits instead of nats",
            "Use the natural logarithm (np.log): the course measures entropy in nats, -sum p log p.",
            lambda x: _entropy_limits(x, log=np.log2),
        ),
    ),
    hints={
        "type": "Return both results as a tuple of arrays: return cold, hot.",
        "shape": "One entropy per row: both arrays have shape x.shape[:-1] (the last axis is summed away).",
        "dtype": "Return float64 entropies: np.log of a count, or np.full(shape, np.log(n)), gives float64.",
        "values": "The entropy of m equal weights 1/m is -m (1/m) log(1/m) = log(m). Ask, for each limit, over "
        "how many entries the weight ends up spread evenly.",
    },
)


def _with_flat_first_row(x):
    x[0] = 0.5
    return x


EXERCISES = (SOFTMAX, TEMPERATURE, MASKED, ENTROPY)
