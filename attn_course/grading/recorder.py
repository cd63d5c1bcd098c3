"""The graded kernel's ``check``: call the learner's function on the grader's inputs and record what it returns.

Under the grader (``ATTN_COURSE_RECORD_DIR`` set when the package is first
imported), ``from attn_course.grading import check, test_inputs`` gives the
two functions below instead of the notebook self-check: they import neither
the exercise specs (whose references are the answer key) nor anything that
judges. ``check(name, function)`` reads the inputs the grader wrote for
exercise ``name`` (secret cases, drawn by the grader), calls ``function`` on
each and writes the results through ``attn_course.grading.result_files``; the
grader collects them right after the test cell and judges them in its own
process. ``test_inputs`` is not available while grading.
"""

from __future__ import annotations

import os

from .result_files import read_inputs, write_result

__all__ = ["RECORD_DIR_VARIABLE", "Recorded", "check", "record", "test_inputs"]

RECORD_DIR_VARIABLE = "ATTN_COURSE_RECORD_DIR"


class Recorded:
    """What a graded ``check`` shows: how many results went to the grader (nothing is judged in the kernel)."""

    def __init__(self, exercise: str, recorded: int):
        self.exercise = exercise
        self.recorded = recorded
        self.verdicts: list = []

    def report(self) -> str:
        return f"{self.exercise}: {self.recorded} results recorded for the grader"

    __str__ = report

    def __repr__(self) -> str:
        return f"Recorded({self.exercise!r}, recorded={self.recorded})"

    def _repr_pretty_(self, printer, cycle):
        printer.text(self.report())


def record(name: str, function, record_dir: str) -> int:
    """Call ``function`` on every input the grader wrote for exercise ``name`` and write what it did."""
    cases = read_inputs(record_dir, name)
    for case_name, args in cases:
        try:
            value = function(*args)
        except Exception as err:  # KeyboardInterrupt (a timeout) and SystemExit end the cell instead
            write_result(record_dir, name, case_name, error=err)
        else:
            write_result(record_dir, name, case_name, value=value)
    return len(cases)


def check(name: str, function, *, raise_on_failure: bool = True) -> Recorded:
    """Graded mode: record ``function``'s results on the grader's inputs for exercise ``name``; judge nothing."""
    if not callable(function):
        raise TypeError(f"check() needs your function as its second argument; got {type(function).__name__}")
    return Recorded(name, record(name, function, os.environ[RECORD_DIR_VARIABLE]))


def test_inputs(name: str, case: str) -> tuple:
    """Not available while grading: the graded cases are the grader's own."""
    raise RuntimeError("test_inputs() is not available while grading: the grader draws its own cases")


test_inputs.__test__ = False  # not a pytest test, despite its name
