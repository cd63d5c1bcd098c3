"""Judging one answer: what an exercise is, and the verdict on what a learner's function returned.

An :class:`Exercise` is one function the learner writes (``softmax(x)``), with

* a **reference**: the package function that does the same job. Expected values
  are always computed from it at check or grading time, in float64, never
  stored;
* **cases**: fixed inputs drawn from a seed, with dimensions that differ from
  each other (``L=3, S=5, d=4, dv=6``) so that a swapped axis cannot pass;
* **invariants** the answer must also satisfy (rows of weights sum to 1,
  masked entries are 0);
* **mistakes**: the classic wrong versions (no max shift, no ``1/sqrt(d)``,
  the mask applied after the softmax, ...). When an answer fails and agrees
  with one of them, the verdict names that mistake in its hint;
* **hints** per kind of failure (wrong type, shape, dtype, NaN, values).

:func:`judge` compares one returned value with the reference, in this order:
type, shape, dtype, finiteness, values (tolerance per dtype, from
``attn_course.tolerances``), invariants. It is used in the learner's notebook
(``attn_course.grading.selfcheck.check``) and in the grader's own process
(``attn_course.grading.grade``), so both give the same verdict and the same hint.
The exercises themselves are defined in ``attn_course.grading.specs``.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..tolerances import tolerance_for

__all__ = [
    "Case",
    "Exercise",
    "Invariant",
    "Mistake",
    "Opaque",
    "Raised",
    "Verdict",
    "describe",
    "format_index",
    "format_number",
    "judge",
    "rows_sum_to_one",
    "within_zero_and_one",
    "zero_where_masked",
]

SAFE_NAME = re.compile(r"[a-z][a-z0-9_]*")

# Failure kinds, in the order they are checked.
PROBLEMS = ("raised", "type", "shape", "dtype", "nonfinite", "values", "invariant")

DEFAULT_HINTS = {
    "raised": "Read the error message: it usually names the line and the shapes involved.",
    "type": "Return a NumPy array built with NumPy operations (np.exp, @, np.where, ...), not a list or a number.",
    "shape": "Write the expected shape of every intermediate result next to it, e.g. # (..., L, S).",
    "dtype": (
        "Keep the input's dtype: float32 in, float32 out. In NumPy 2 a NumPy scalar such as np.sqrt(d) "
        "turns a float32 array into float64; use math.sqrt(d), or .astype(x.dtype) at the end."
    ),
    "nonfinite": "Some entries are NaN or infinite: look for exp() of large numbers or 0 / 0.",
    "values": "Try your function on a tiny input you can work out by hand.",
    "invariant": "Check the property named above on a small example.",
}

# Errors whose cause does not depend on the exercise.
RAISED_HINTS = {
    "MemoryError": "Your function asked for more memory than allowed. The test inputs are tiny: look for an "
    "array built far larger than the inputs.",
    "RecursionError": "Your function calls itself without end: NumPy needs no recursion here.",
    "NameError": "A name your function uses is not defined. Everything it needs must be defined in the answer "
    "cells (cells you add are not run when grading).",
}


# --------------------------------------------------------------------------- pieces of an exercise


@dataclass(frozen=True)
class Case:
    """One fixed input: ``make_args(rng)`` returns the positional arguments, drawn with ``seed``.

    ``secret(rng)``, when given, draws the grader's secret variants instead of ``make_args``: a case whose
    inputs are only sizes or constants (``make_args`` ignores its ``rng``) would otherwise be judged on its public
    arguments, which a learner could look up. It draws inputs of the same kind and regime as the public case
    (sizes that divide where the task needs it, a partial tile where the case is about one, ...).
    """

    name: str
    about: str
    make_args: Callable[[np.random.Generator], tuple]
    seed: int
    points: float = 1.0
    secret: Callable[[np.random.Generator], tuple] | None = None

    def args(self, seed: int | None = None) -> tuple:
        """The arguments of this case (fresh arrays on every call); ``seed`` draws the grader's secret variant
        (same shapes and kinds, other values; from ``secret`` when the case has one) instead of the public one."""
        public = tuple(self.make_args(np.random.default_rng(self.seed)))
        if seed is None:
            return public
        rng = np.random.default_rng(seed)
        if self.secret is None:
            return tuple(self.make_args(rng))
        for _ in range(100):  # a few sizes to choose from may draw the public ones: draw again
            drawn = tuple(self.secret(rng))
            if not self.same_args(drawn, public):
                break
        return drawn

    @staticmethod
    def same_args(first, second) -> bool:
        """Whether two argument lists are equal (arrays: same shape, dtype and values)."""
        if isinstance(first, np.ndarray) or isinstance(second, np.ndarray):
            return (
                isinstance(first, np.ndarray)
                and isinstance(second, np.ndarray)
                and first.shape == second.shape
                and first.dtype == second.dtype
                and bool(np.array_equal(first, second))
            )
        if isinstance(first, (tuple, list)) and isinstance(second, (tuple, list)):
            return len(first) == len(second) and all(Case.same_args(a, b) for a, b in zip(first, second, strict=True))
        return type(first) is type(second) and first == second


@dataclass(frozen=True)
class Mistake:
    """A classic wrong answer: ``compute`` takes the case's arguments and returns what that mistake returns."""

    name: str
    hint: str
    compute: Callable[..., Any]


@dataclass(frozen=True)
class Invariant:
    """A property of a right answer: ``violation(outputs, args)`` returns None, or a message saying where it fails.

    ``outputs`` is the tuple of returned arrays as float64 (already checked for
    type, shape and finiteness); ``tol`` is the tolerance of the expected dtype.
    """

    description: str
    violation: Callable[[tuple, tuple, dict], str | None]


@dataclass(frozen=True)
class Exercise:
    """One function the learner writes, and everything needed to judge it."""

    name: str
    function: str  # the name the learner defines, e.g. "softmax"
    params: tuple[str, ...]  # its parameters, e.g. ("x",)
    lesson: str  # the lesson it builds on, e.g. "02_softmax_temperature_and_scaling"
    reference: Callable[..., Any]
    cases: tuple[Case, ...]
    outputs: tuple[str, ...] = ("result",)  # more than one: the function returns a tuple
    invariants: tuple[Invariant, ...] = ()
    mistakes: tuple[Mistake, ...] = ()
    hints: Mapping[str, str] = field(default_factory=dict)
    # {"rtol": ..., "atol": ...} for every comparison of this exercise, instead of the dtype's: an experiment whose
    # answer is found by a search (a bisection) is right within the precision the task asks for
    tolerance: Mapping[str, float] | None = None
    # edge cases only the grader runs: {public case name: (cases, ...)}; the public case's test passes only if
    # its secret draw and each of these pass (they carry no points of their own)
    hidden: Mapping[str, tuple[Case, ...]] = field(default_factory=dict)

    def __post_init__(self):
        names = [case.name for case in self.cases]
        if len(set(names)) != len(names):
            raise ValueError(f"exercise {self.name!r}: case names must be unique; got {names}")
        hidden = [case.name for cases in self.hidden.values() for case in cases]
        unknown = set(self.hidden) - set(names)
        if unknown or len(set(hidden) | set(names)) != len(hidden) + len(names):
            raise ValueError(f"exercise {self.name!r}: hidden cases must hang on public cases and have new names")
        for name in (self.name, *names, *hidden):  # they become file names in the grader's folders
            if not SAFE_NAME.fullmatch(name):
                raise ValueError(f"exercise and case names must be lower-case words joined by _; got {name!r}")

    @property
    def max_score(self) -> float:
        return float(sum(case.points for case in self.cases))

    def case(self, name: str) -> Case:
        for case in self.cases:
            if case.name == name:
                return case
        raise KeyError(f"exercise {self.name!r} has no case {name!r}; cases: {[c.name for c in self.cases]}")

    def test_name(self, case: Case) -> str:
        return f"{self.name}: {case.name}"


# --------------------------------------------------------------------------- what came back


@dataclass(frozen=True)
class Raised:
    """The learner's function raised ``type_name: message`` instead of returning."""

    type_name: str
    message: str

    @classmethod
    def from_exception(cls, err: BaseException) -> Raised:
        return cls(type(err).__name__, _shorten(str(err), 300))


@dataclass(frozen=True)
class Opaque:
    """A returned object that is not an array, known only by its description and type name (from the grader's files)."""

    description: str
    type_name: str = ""


def type_name(value) -> str:
    """The type's name of a returned value (as recorded, for an :class:`Opaque`)."""
    return value.type_name if isinstance(value, Opaque) else type(value).__name__


def _shorten(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe_sequence(value) -> str:
    inner = ""
    if value and all(isinstance(item, np.ndarray) for item in value):
        inner = ": " + ", ".join(describe(item) for item in value)
    return f"a {type(value).__name__} of {len(value)} item{'s' if len(value) != 1 else ''}{inner}"


def describe(value) -> str:
    """A short description of a returned value, in the learner's terms (never its full contents)."""
    if isinstance(value, Opaque):
        text = value.description
    elif isinstance(value, np.ndarray):
        text = f"a {value.dtype} array of shape {tuple(value.shape)}"
    elif value is None:
        text = "None"
    elif isinstance(value, np.generic):
        text = f"a NumPy scalar of dtype {value.dtype} ({_shorten(repr(value.item()), 40)})"
    elif isinstance(value, (bool, int, float, complex)):
        text = f"a Python {type(value).__name__} ({_shorten(repr(value), 40)})"
    elif isinstance(value, (list, tuple)):
        text = _describe_sequence(value)
    else:
        text = f"a {type(value).__module__.split('.')[0]}.{type(value).__qualname__}"
        if getattr(value, "shape", None) is not None:
            text += f" (dtype {getattr(value, 'dtype', None)}, shape {tuple(value.shape)})"
    return text


def _expectation(array: np.ndarray) -> str:
    return f"a NumPy {array.dtype} array of shape {tuple(array.shape)}"


def format_index(position) -> str:
    """An array position as the learner would index it: ``[1, 0, 2]``."""
    return "[" + ", ".join(str(int(i)) for i in position) + "]"


def format_number(value) -> str:
    """A number in six significant digits (``nan``, ``inf`` as such), for verdicts and invariant messages."""
    value = float(value)
    return repr(value) if not math.isfinite(value) else f"{value:.6g}"


# --------------------------------------------------------------------------- the verdict

STATUS_WORDS = {
    "passed": "passed",
    "failed": "FAILED",
    "not_attempted": "not attempted yet",
    "timeout": "TIMEOUT",
    "error": "ERROR",
    "refused": "REFUSED",
}


@dataclass
class Verdict:
    """The outcome of one case: ``status`` is passed, failed, not_attempted, timeout, error or refused."""

    exercise: str
    case: str
    about: str
    status: str
    max_points: float
    problem: str = ""  # which check failed: one of PROBLEMS, or "" when passed
    expected: str = ""
    got: str = ""
    detail: str = ""
    hint: str = ""

    @property
    def points(self) -> float:
        return self.max_points if self.status == "passed" else 0.0

    @property
    def name(self) -> str:
        return f"{self.exercise}: {self.case}"

    def details(self) -> list[str]:
        """What was expected, what came back, where they first differ, and the hint (empty when passed)."""
        lines = []
        if self.expected:
            lines.append(f"expected: {self.expected}")
        if self.got:
            lines.append(f"got:      {self.got}")
        if self.detail:
            lines.append(self.detail)
        if self.hint:
            lines.append(f"hint: {self.hint}")
        return lines

    def text(self) -> str:
        """The verdict as text: a headline with the status and what was tested, then the details."""
        head = STATUS_WORDS.get(self.status, self.status)
        return "\n".join([f"{head}: {self.about}", *self.details()])


# --------------------------------------------------------------------------- judging


def _outputs_tuple(exercise: Exercise, value) -> tuple:
    return tuple(value) if len(exercise.outputs) > 1 else (value,)


def _float64_copy(arg):
    if isinstance(arg, np.ndarray) and np.issubdtype(arg.dtype, np.floating):
        return arg.astype(np.float64)
    return arg


def _quietly(function, *args):
    """Call ``function`` with NumPy's floating-point warnings silenced (used for references and mistakes)."""
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args)


def expected_outputs(exercise: Exercise, args: tuple) -> tuple[tuple, tuple]:
    """``(values, templates)``: the reference in float64, and computed in the inputs' own dtypes.

    ``values`` are what the answer is compared with; ``templates`` give the
    dtype and shape the answer must have (float32 in, float32 out).
    """
    templates = _outputs_tuple(exercise, _quietly(exercise.reference, *args))
    values = _outputs_tuple(exercise, _quietly(exercise.reference, *(_float64_copy(a) for a in args)))
    templates = tuple(np.asarray(t) for t in templates)
    values = tuple(np.asarray(v) for v in values)
    return values, templates


def _close(actual: np.ndarray, expected: np.ndarray, tol: dict) -> np.ndarray:
    """Elementwise: ``|actual - expected| <= atol + rtol * |expected|`` (NaN never close)."""
    if np.bool_ in (actual.dtype, expected.dtype) or not np.issubdtype(expected.dtype, np.floating):
        return np.asarray(actual == expected)
    a, e = actual.astype(np.float64), expected.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        return np.abs(a - e) <= tol["atol"] + tol["rtol"] * np.abs(e)


def _tolerance(dtype) -> dict:
    try:
        return tolerance_for(dtype)
    except KeyError:
        return {"rtol": 0.0, "atol": 0.0}  # integers and booleans: exact


def _matches(got: tuple, wrong: tuple, tolerance: Mapping[str, float] | None = None) -> bool:
    """Whether the returned arrays agree with a mistake's (same shapes, close values, NaN where it has NaN)."""
    if len(got) != len(wrong):
        return False
    for actual, wrong_output in zip(got, wrong, strict=True):
        other = np.asarray(wrong_output)
        if not isinstance(actual, np.ndarray) or actual.shape != other.shape:
            return False
        if actual.dtype.kind not in "fbiu" or other.dtype.kind not in "fbiu":  # integer ids compare exactly too
            return False
        tol = dict(tolerance) if tolerance is not None else _tolerance(actual.dtype)
        with np.errstate(all="ignore"):
            same = np.isclose(
                actual.astype(np.float64), other.astype(np.float64), equal_nan=True, rtol=tol["rtol"], atol=tol["atol"]
            )
        if not bool(np.all(same)):
            return False
    return True


def _mistake_hint(exercise: Exercise, args: tuple, got: tuple) -> str | None:
    for mistake in exercise.mistakes:
        try:
            wrong = _outputs_tuple(exercise, _quietly(mistake.compute, *args))
        except Exception:  # the mistake does not even run on these inputs: it cannot be the one
            continue
        if _matches(got, wrong, exercise.tolerance):
            return mistake.hint
    return None


def _fail(exercise, case, problem, expected="", got="", detail="", hint=None) -> Verdict:
    return Verdict(
        exercise.name,
        case.name,
        case.about,
        "failed",
        case.points,
        problem,
        expected,
        got,
        detail,
        hint if hint is not None else exercise.hints.get(problem, DEFAULT_HINTS[problem]),
    )


def _type_hint(actual) -> str | None:
    if type_name(actual) == "NoneType":
        return "Your function returned None: did you forget the return statement?"
    if type_name(actual) == "list":
        return (
            "You returned a Python list. Work with whole arrays (np.exp, @, np.where) "
            "and return the array; np.asarray(..., dtype=x.dtype) converts a list."
        )
    return None


def _first(where: np.ndarray, expected: np.ndarray, actual: np.ndarray, words: str) -> str:
    first = np.argwhere(where)[0] if where.ndim else ()
    wanted, came = format_number(expected[tuple(first)]), format_number(actual[tuple(first)])
    return f"{words} {format_index(first)}: expected {wanted}, got {came}"


def _array_problem(
    actual, expected: np.ndarray, template: np.ndarray, tolerance: Mapping[str, float] | None = None
) -> tuple[str, str, str, str] | None:
    """``(problem, expected, got, detail)`` for the first check one returned array fails, or None."""
    what = _expectation(template)
    if not isinstance(actual, np.ndarray):
        return "type", what, describe(actual), ""
    if actual.shape != template.shape:
        return "shape", what, describe(actual), ""
    tol = dict(tolerance) if tolerance is not None else _tolerance(template.dtype)
    if actual.dtype != template.dtype:
        right = actual.dtype.kind in "fb" and bool(np.all(_close(actual, expected, tol)))
        detail = "The values themselves are right: only the dtype is wrong." if right else ""
        return "dtype", what, describe(actual), detail
    if actual.dtype.kind == "f":
        bad = ~np.isfinite(actual) & np.isfinite(expected)
        if bool(np.any(bad)):
            got = f"{int(np.count_nonzero(bad))} of {actual.size} entries are NaN or infinite"
            return "nonfinite", what + ", all entries finite", got, _first(bad, expected, actual, "first at")
    close = _close(actual, expected, tol)
    if not bool(np.all(close)):
        got = (
            f"the right shape and dtype, but {int(np.count_nonzero(~close))} of {actual.size} entries differ "
            f"(tolerance rtol={tol['rtol']:g}, atol={tol['atol']:g})"
        )
        return "values", what, got, _first(~close, expected, actual, "first difference at")
    return None


def judge(exercise: Exercise, case: Case, result, args: tuple | None = None) -> Verdict:
    """The verdict on ``result``, what the learner's function returned for ``case``.

    ``result`` is the returned value (arrays, a tuple of them, anything), or a
    :class:`Raised` when the function raised, or an :class:`Opaque`
    description. ``args`` defaults to ``case.args()``; the reference is
    computed here, at judging time.
    """
    args = case.args() if args is None else args
    if isinstance(result, Raised):
        if result.type_name == "NotImplementedError":
            detail = "the function still raises NotImplementedError: replace the stub with your code"
            return Verdict(exercise.name, case.name, case.about, "not_attempted", case.points, detail=detail)
        hint = RAISED_HINTS.get(result.type_name)
        return _fail(exercise, case, "raised", got=f"{result.type_name}: {result.message}", hint=hint)

    values, templates = expected_outputs(exercise, args)
    n = len(exercise.outputs)
    if n > 1 and (not isinstance(result, (tuple, list)) or len(result) != n):
        want = f"a tuple of {n} arrays ({', '.join(exercise.outputs)})"
        hint = f"Return the {n} results together, as a tuple: return {', '.join(exercise.outputs)}"
        return _fail(exercise, case, "type", expected=want, got=describe(result), hint=hint)
    got = _outputs_tuple(exercise, result)

    for index, (actual, expected, template) in enumerate(zip(got, values, templates, strict=True)):
        found = _array_problem(actual, expected, template, exercise.tolerance)
        if found is None:
            continue
        problem, want, came, detail = found
        label = f"{exercise.outputs[index]}: " if n > 1 else ""
        if problem == "type":
            hint = _type_hint(actual)
        elif problem == "dtype":
            hint = None
        else:
            hint = _mistake_hint(exercise, args, got)
        return _fail(exercise, case, problem, label + want, label + came, detail, hint)

    as64 = tuple(np.asarray(a, dtype=np.float64) for a in got)
    tol = dict(exercise.tolerance) if exercise.tolerance is not None else _tolerance(templates[0].dtype)
    for invariant in exercise.invariants:
        message = invariant.violation(as64, args, tol)
        if message:
            hint = _mistake_hint(exercise, args, got)
            return _fail(exercise, case, "invariant", invariant.description, message, hint=hint)
    return Verdict(exercise.name, case.name, case.about, "passed", case.points)


# --------------------------------------------------------------------------- invariants used by several exercises


def rows_sum_to_one(output: int = 0, mask_arg: int | None = None) -> Invariant:
    """Each row (last axis) of output ``output`` sums to 1, or to 0 where the mask (argument ``mask_arg``) is all
    False."""

    def violation(outputs, args, tol):
        weights = outputs[output]
        sums = weights.sum(axis=-1)
        target = np.ones_like(sums)
        if mask_arg is not None and args[mask_arg] is not None:
            mask = np.broadcast_to(np.asarray(args[mask_arg]), weights.shape)
            target = np.broadcast_to(mask.any(axis=-1), sums.shape).astype(np.float64)
        bad = np.abs(sums - target) > tol["atol"] * weights.shape[-1] + tol["rtol"]
        if bool(np.any(bad)):
            first = np.argwhere(bad)[0]
            total, wanted = format_number(sums[tuple(first)]), format_number(target[tuple(first)])
            return f"row {format_index(first)} sums to {total}, not {wanted}"
        return None

    description = "each row sums to 1"
    if mask_arg is not None:
        description += " (a row whose mask keeps nothing is all 0)"
    return Invariant(description, violation)


def zero_where_masked(output: int, mask_arg: int) -> Invariant:
    """Entries of output ``output`` are exactly 0 where the mask (argument ``mask_arg``) is False."""

    def violation(outputs, args, tol):
        if args[mask_arg] is None:
            return None
        weights = outputs[output]
        mask = np.broadcast_to(np.asarray(args[mask_arg]), weights.shape)
        bad = ~mask & (weights != 0)
        if bool(np.any(bad)):
            first = np.argwhere(bad)[0]
            return f"entry {format_index(first)} is masked out but has weight {format_number(weights[tuple(first)])}"
        return None

    return Invariant("masked entries are exactly 0", violation)


def within_zero_and_one(output: int = 0) -> Invariant:
    """Every entry of output ``output`` lies in [0, 1]."""

    def violation(outputs, args, tol):
        weights = outputs[output]
        bad = (weights < -tol["atol"]) | (weights > 1 + tol["atol"])
        if bool(np.any(bad)):
            first = np.argwhere(bad)[0]
            return f"entry {format_index(first)} is {format_number(weights[tuple(first)])}"
        return None

    return Invariant("every weight lies between 0 and 1", violation)
