"""The grader: exercise specs, the notebook self-check, exercise generation and trustworthy grading.

Its parts, from the learner's notebook to the instructor's gradebook:

* ``specs``: one module per lesson defining its exercises (seeded cases, the
  package's reference, invariants, classic mistakes, hints), and the registry
  that finds an exercise by name;
* ``judge``: what an exercise is, and the verdict on one returned value (type,
  shape, dtype, finiteness, values, invariants, a hint for the mistake made);
* ``selfcheck``: ``check("softmax", softmax)`` and ``test_inputs(...)``, which
  the exercise notebooks import from here;
* ``assign``: builds ``exercises/`` from the masters in ``solutions/``
  (``python -m attn_course.assign``);
* ``grade``: grades submitted notebooks (``python -m attn_course.grade``);
  it runs each in ``sandbox`` (a fresh kernel with limits, started through
  ``launch_with_limits.py``), and the kernel's ``check`` only writes results
  through ``result_files`` for the grader to judge in its own process.

Importing this package loads only the self-check and what it needs (not
nbformat or the kernel machinery), so a notebook's setup cell stays fast.
In a grading kernel (``ATTN_COURSE_RECORD_DIR`` set) it loads only the
recorder (``recorder``): ``check`` records, the specs are never imported
(the kernel cannot import them at all, see ``sandbox``).
"""

import os

from .recorder import RECORD_DIR_VARIABLE

if os.environ.get(RECORD_DIR_VARIABLE):
    from .recorder import check, test_inputs
else:
    from .selfcheck import CheckFailed, CheckSummary, check, test_inputs

__all__ = ["RECORD_DIR_VARIABLE", "CheckFailed", "CheckSummary", "check", "test_inputs"]


def __getattr__(name):  # the self-check's classes, on demand (not in a grading kernel)
    if name in ("CheckFailed", "CheckSummary"):
        from . import selfcheck

        return getattr(selfcheck, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
