"""Random test inputs shared by the exercise specs: arrays and masks drawn from a seeded generator.

Each spec's cases call these with the ``rng`` that :class:`~attn_course.grading.judge.Case`
seeds, so the same case always gives the same inputs, in the learner's
notebook and in the grader.
"""

from __future__ import annotations

import numpy as np

__all__ = ["keep_mask", "normal_array"]


def normal_array(rng: np.random.Generator, shape, dtype=np.float32) -> np.ndarray:
    """Standard-normal entries of ``shape``, in ``dtype``."""
    return rng.standard_normal(shape).astype(dtype)


def keep_mask(rng: np.random.Generator, shape, keep=0.6, empty_rows=()) -> np.ndarray:
    """A boolean mask (True = keep) with at least one kept entry per row, except rows in ``empty_rows``."""
    mask = rng.random(shape) < keep
    rows = mask.reshape(-1, shape[-1])
    rows[np.arange(rows.shape[0]), rng.integers(0, shape[-1], rows.shape[0])] = True
    for row in empty_rows:
        rows[row] = False
    return rows.reshape(shape)
