"""Softmax: turning scores into weights that are positive and sum to one.

    softmax(x)_i = exp(x_i - m) / sum_j exp(x_j - m),   m = max_j x_j

Subtracting the row maximum ``m`` changes nothing mathematically (it cancels
between numerator and denominator) but keeps ``exp`` from overflowing: the
largest exponent becomes ``exp(0) = 1``.

A boolean ``mask`` (True = keep) removes entries before normalising: they get
weight exactly 0. A row where nothing is kept gets all-zero weights, never NaN
(the naive formula would compute 0 / 0 there).
"""

from __future__ import annotations

import math

from .backend import get_namespace
from .validation import as_array, as_float_array, check_int, check_mask, compute_dtype, require_finite, shape_of

__all__ = ["softmax"]


def masked_softmax(scores, axis: int, mask, xp):
    """Stable softmax of ``scores`` along ``axis`` with an optional boolean ``mask``; no checks.

    Entries that are masked out or equal to ``-inf`` get weight 0; a slice with
    nothing left gets all zeros.
    """
    if mask is not None:
        scores = xp.where(mask, scores, xp.asarray(-math.inf, dtype=scores.dtype))
    row_max = xp.max(scores, axis=axis, keepdims=True)
    # a fully masked row has max -inf; shifting by 0 there keeps exp(-inf) = 0
    row_max = xp.where(xp.isfinite(row_max), row_max, xp.zeros_like(row_max))
    exps = xp.exp(scores - row_max)
    totals = xp.sum(exps, axis=axis, keepdims=True)
    totals = xp.where(totals > 0, totals, xp.ones_like(totals))
    return exps / totals


def softmax(x, axis: int = -1, mask=None):
    """Numerically stable softmax of ``x`` along ``axis``.

    x:    (...) floating array; ``-inf`` entries count as masked out.
    mask: optional boolean array broadcastable to ``x.shape``; True = keep.
    Returns an array like ``x`` (same library, shape and dtype) whose slices
    along ``axis`` sum to 1, or are all 0 where the mask keeps nothing.
    float16 input is computed in float32 and returned as float16.
    """
    x = as_float_array("x", x)
    mask = None if mask is None else as_array("mask", mask)
    xp = get_namespace(x, mask)
    axis = check_int("axis", axis)
    if x.ndim == 0:
        raise ValueError("x must have at least 1 dimension; got a 0-d array (a single number)")
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis {axis} is out of range for x of shape {shape_of(x)} ({x.ndim} dimensions)")
    if mask is not None:
        mask = check_mask(mask, shape_of(x), "x", xp, min_ndim=1)
    require_finite("x", x, xp, allow_neg_inf=True)
    work = xp.astype(x, compute_dtype(x.dtype, xp))
    return xp.astype(masked_softmax(work, axis, mask, xp), x.dtype)
