"""The float64 reference for the long-sequence functions: dense masked attention, written out in NumPy.

``test_tiled.py::test_reference_agrees_with_torch`` ties this formula to
torch's ``scaled_dot_product_attention``; the tests then call the formula
(torch is slow on the many tiny inputs of a test run when the machine is busy).
"""

from __future__ import annotations

import math

import numpy as np

from attn_course import masks
from attn_course.backend import to_numpy


def dense_mask(mask, L: int, S: int):
    """A mask argument (None, array or predicate) as a NumPy boolean array, or None."""
    if mask is None:
        return None
    if callable(mask) and not hasattr(mask, "shape"):
        return masks.materialize(mask, L, S)
    return np.asarray(to_numpy(mask), dtype=bool)


def dense_attention64(q, k, v, mask=None, *, is_causal=False, scale=None) -> np.ndarray:
    """``softmax(q k^T * scale) v`` in float64; rows that may attend to nothing are zero.

    mask: None, a boolean array broadcastable to (..., L, S), or a predicate.
    """
    q, k, v = (np.asarray(to_numpy(x), dtype=np.float64) for x in (q, k, v))
    L, S = q.shape[-2], k.shape[-2]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    allowed = dense_mask(mask, L, S)
    if is_causal:
        below = np.tril(np.ones((L, S), dtype=bool))
        allowed = below if allowed is None else allowed & below
    scores = q @ np.swapaxes(k, -1, -2) * scale  # (..., L, S)
    if allowed is not None:
        scores = np.where(allowed, scores, -np.inf)
    row_max = scores.max(axis=-1, keepdims=True)
    row_max = np.where(np.isfinite(row_max), row_max, 0.0)
    weights = np.exp(scores - row_max)
    totals = weights.sum(axis=-1, keepdims=True)
    return (weights / np.where(totals > 0, totals, 1.0)) @ v  # (..., L, dv)
