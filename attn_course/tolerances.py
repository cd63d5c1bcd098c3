"""How close is close enough: the comparison tolerances of the course, written once.

A result computed in a floating dtype is compared with a float64 reference
within a tolerance that depends on that dtype:

    |actual - expected| <= atol + rtol * |expected|      (elementwise)

float32 carries about 7 significant digits, float16 about 3, so the bounds
follow the precision of the dtype the learner (or the package) computed in.
The unit tests (``tests/support.py``), the notebooks' self-checks and the
grader (both in ``attn_course.grading``) all read this table.
"""

from __future__ import annotations

import numpy as np

__all__ = ["TOLERANCES", "tolerance_for"]

# How close a result must be to a float64 reference, per dtype of the result.
TOLERANCES = {
    np.dtype(np.float64): {"rtol": 1e-10, "atol": 1e-12},
    np.dtype(np.float32): {"rtol": 1e-5, "atol": 1e-5},
    np.dtype(np.float16): {"rtol": 1e-2, "atol": 1e-2},
}


def tolerance_for(dtype) -> dict[str, float]:
    """``{"rtol": ..., "atol": ...}`` for results of ``dtype`` (a float dtype; others raise ``KeyError``)."""
    dtype = np.dtype(dtype)
    if dtype not in TOLERANCES:
        known = ", ".join(str(d) for d in TOLERANCES)
        raise KeyError(f"no tolerance for dtype {dtype}; known: {known}")
    return dict(TOLERANCES[dtype])
