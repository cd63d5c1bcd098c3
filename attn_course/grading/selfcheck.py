"""Is my answer right, and if not, why? The self-check of the exercise notebooks.

A check cell after each exercise runs all of that exercise's tests at once::

    check("softmax", softmax)

and shows one line per test, and for a failing test what was expected, what
came back (type, shape, dtype, the first entry that differs) and a hint for
the classic mistake that produces exactly this failure. It never shows the
solution. The expected values are computed by the package's reference at
check time, on fixed inputs you can fetch yourself::

    x, = test_inputs("softmax", "large_scores")

``check`` returns a :class:`CheckSummary`. When an attempted answer fails a
test it also raises :class:`CheckFailed` (a short message, no long
traceback), so that "Run all" stops at the first wrong answer, as the test
cells of graded notebooks do; an exercise not attempted yet only says so.

**Grading.** Under the grader (``python -m attn_course.grade``), the kernel
runs with ``ATTN_COURSE_RECORD_DIR`` set. ``check`` then judges nothing: it
only records what the function returns on the grader's inputs (see
``attn_course.grading.result_files``), and the grader compares in its own
process. Replacing ``check``, numpy's assert helpers or IPython's traceback
hook inside the notebook therefore cannot earn points. In the grading kernel
itself the package gives ``attn_course.grading.recorder``'s ``check`` instead
of this module, which is not importable there (it reads the answer key).
"""

from __future__ import annotations

import os

from .judge import Raised, Verdict, judge
from .recorder import RECORD_DIR_VARIABLE, record
from .specs import get_exercise

__all__ = ["RECORD_DIR_VARIABLE", "CheckFailed", "CheckSummary", "check", "test_inputs"]

MARKS = {"passed": "✓", "failed": "✗", "not_attempted": "·"}


class CheckSummary:
    """The outcome of ``check``: one :class:`~attn_course.grading.judge.Verdict` per test."""

    def __init__(self, exercise: str, verdicts: list[Verdict], recorded: int | None = None):
        self.exercise = exercise
        self.verdicts = verdicts
        self.recorded = recorded  # graded mode: how many results were written for the grader

    def _count(self, status: str) -> int:
        return sum(verdict.status == status for verdict in self.verdicts)

    @property
    def passed(self) -> int:
        return self._count("passed")

    @property
    def failed(self) -> int:
        return self._count("failed")

    @property
    def not_attempted(self) -> int:
        return self._count("not_attempted")

    @property
    def total(self) -> int:
        return len(self.verdicts)

    @property
    def score(self) -> float:
        return sum(verdict.points for verdict in self.verdicts)

    @property
    def max_score(self) -> float:
        return sum(verdict.max_points for verdict in self.verdicts)

    @property
    def all_passed(self) -> bool:
        return bool(self.verdicts) and self.passed == self.total

    def report(self) -> str:
        """The text shown in the notebook."""
        if self.recorded is not None:
            return f"{self.exercise}: {self.recorded} results recorded for the grader"
        if self.not_attempted == self.total:
            return (
                f"{self.exercise}: not attempted yet (the function still raises NotImplementedError).\n"
                "Write your code in the cell above, run that cell, then run this one again."
            )
        head = (
            f"{self.exercise}: {self.passed} of {self.total} tests passed "
            f"({_points(self.score)} of {_points(self.max_score)} points)"
        )
        lines = [head]
        for verdict in self.verdicts:
            lines.append(f"  {MARKS.get(verdict.status, '?')} {verdict.case}: {verdict.about}")
            if verdict.status != "passed":
                lines.extend(f"      {line}" for line in verdict.details())
        failing = [verdict for verdict in self.verdicts if verdict.status == "failed"]
        if failing:
            names = ", ".join(get_exercise(self.exercise).params)
            lines.append(
                f"To try a failing test yourself: {names}{',' if ', ' not in names else ''} = "
                f'test_inputs("{self.exercise}", "{failing[0].case}")'
            )
        return "\n".join(lines)

    __str__ = report

    def __repr__(self) -> str:
        return (
            f"CheckSummary({self.exercise!r}, passed={self.passed}, failed={self.failed}, "
            f"not_attempted={self.not_attempted}, total={self.total})"
        )

    def _repr_pretty_(self, printer, cycle):  # IPython shows the report as the cell's result
        printer.text(self.report())


class CheckFailed(AssertionError):  # noqa: N818 (the name a learner reads under a failing check)
    """Raised by ``check`` when an attempted answer fails a test; the report is printed above it."""

    def __init__(self, summary: CheckSummary):
        self.summary = summary
        failed = summary.failed
        super().__init__(f"{failed} of {summary.total} tests of {summary.exercise} failed: see the report above")

    def _render_traceback_(self):  # IPython: one line instead of a traceback through this module
        return [f"CheckFailed: {self}"]


def _points(value: float) -> str:
    return f"{value:g}"


def test_inputs(name: str, case: str) -> tuple:
    """The arguments of test ``case`` of exercise ``name`` (fresh copies): call your function on them."""
    return get_exercise(name).case(case).args()


test_inputs.__test__ = False  # not a pytest test, despite its name


def _record(name: str, function, record_dir: str) -> CheckSummary:
    """Graded mode: call ``function`` on the grader's inputs and write what it returns; judge nothing."""
    return CheckSummary(name, [], recorded=record(name, function, record_dir))


def check(name: str, function, *, raise_on_failure: bool = True) -> CheckSummary:
    """Run every test of exercise ``name`` on ``function`` and report, kindly.

    Returns a :class:`CheckSummary` (shown as the report in a notebook). When
    an attempted answer fails a test and ``raise_on_failure`` is true, the
    report is printed and :class:`CheckFailed` is raised.
    """
    exercise = get_exercise(name)
    if not callable(function):
        raise TypeError(
            f"check() needs your function as its second argument, e.g. "
            f"check({name!r}, {exercise.function}); got {type(function).__name__}"
        )
    record_dir = os.environ.get(RECORD_DIR_VARIABLE)
    if record_dir:
        return _record(name, function, record_dir)

    verdicts = []
    for case in exercise.cases:
        try:
            result = function(*case.args())
        except Exception as err:
            result = Raised.from_exception(err)
        verdicts.append(judge(exercise, case, result))
    summary = CheckSummary(name, verdicts)
    if raise_on_failure and summary.failed:
        print(summary.report())
        raise CheckFailed(summary)
    return summary
