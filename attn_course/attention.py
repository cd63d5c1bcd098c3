"""Scaled dot-product attention (Vaswani et al. 2017).

    Attention(Q, K, V) = softmax(Q K^T * scale) V,    scale = 1 / sqrt(d)

Each query row ``q_i`` is compared with every key ``k_j`` by a dot product;
the scores are scaled (so their spread does not grow with ``d``), turned into
weights by a softmax over the keys, and the output row is the weighted sum of
the value rows. Shapes follow torch: ``q (..., L, d)``, ``k (..., S, d)``,
``v (..., S, dv)`` give an output ``(..., L, dv)`` and weights ``(..., L, S)``.

``scaled_dot_product_attention`` below is the reference: the four lines of
the formula on any array library (NumPy, CuPy, torch). For NumPy arrays, when
the weights are not asked for, one line hands the same formula to the CPU fast
path in ``attn_course.fast.dense`` (threads, cache-sized blocks of rows);
``ATTN_COURSE_FAST=0`` or ``attn_course.fast.disabled()`` turns it off.
"""

from __future__ import annotations

import array_api_compat

from . import fast
from .backend import get_namespace
from .fast import dense as fast_dense
from .softmax import masked_softmax
from .validation import (
    as_array,
    check_bool,
    check_mask,
    check_qkv,
    check_scale,
    compute_dtype,
    is_numpy,
    shape_of,
)

__all__ = ["attend", "attention_mask", "scaled_dot_product_attention"]


def attention_mask(mask, is_causal: bool, batch, L: int, S: int, xp, like):
    """The boolean mask to apply (or None): ``mask`` checked against ``(*batch, L, S)``, AND causal."""
    is_causal = check_bool("is_causal", is_causal)
    if mask is not None:
        mask = check_mask(mask, (*batch, L, S), "the attention scores (..., L, S)", xp)
    if is_causal:
        device = array_api_compat.device(like)
        i = xp.reshape(xp.arange(L, device=device), (L, 1))  # query positions
        j = xp.reshape(xp.arange(S, device=device), (1, S))  # key positions
        causal = j <= i  # (L, S): no key from the future (top-left aligned when L != S, as torch)
        mask = causal if mask is None else mask & causal
    return mask


def attend(scores, v, mask, xp):
    """Softmax the ``scores (..., L, S)`` over the keys (masked), then the weighted sum of the value rows.

    Returns ``(out (..., L, dv), weights (..., L, S))``; a row whose mask allows
    nothing gets zero weights and a zero output row.
    """
    weights = masked_softmax(scores, -1, mask, xp)  # (..., L, S): rows sum to 1
    return weights @ v, weights  # (..., L, dv): out_i = sum_j w_ij v_j


def scaled_dot_product_attention(q, k, v, mask=None, *, is_causal=False, scale=None, return_weights=False):
    """``softmax(q k^T * scale) v`` with an optional boolean mask.

    q: (..., L, d), k: (..., S, d), v: (..., S, dv); leading dimensions broadcast.
    mask: boolean, broadcastable to (..., L, S) without enlarging it; True = may attend.
    is_causal: also forbid keys ``j > i`` (top-left aligned, as torch does when L != S);
        combines with ``mask`` (both must allow a pair).
    scale: multiplies the scores; default ``1 / sqrt(d)``.
    Returns out (..., L, dv), and the weights (..., L, S) too if ``return_weights``.
    A query that may attend to nothing gets zero weights and a zero output row.
    dtype is kept; float16 is computed in float32.
    """
    mask = None if mask is None else as_array("mask", mask)
    q, k, v, xp, batch = check_qkv(q, k, v)
    if mask is not None:
        get_namespace(q, mask)  # one library for all inputs
    L, d = shape_of(q)[-2:]
    S = shape_of(k)[-2]
    is_causal = check_bool("is_causal", is_causal)
    scale = check_scale(scale, d)
    return_weights = check_bool("return_weights", return_weights)
    mask = None if mask is None else check_mask(mask, (*batch, L, S), "the attention scores (..., L, S)", xp)

    if fast.enabled() and is_numpy(q, k, v, mask) and not return_weights:  # same formula, blocks of rows on threads
        return fast_dense.dense_attention(q, k, v, mask, is_causal, scale, batch).astype(q.dtype, copy=False)

    mask = attention_mask(mask, is_causal, batch, L, S, xp, like=q)
    work = compute_dtype(q.dtype, xp)  # float16 is computed in float32
    q_, k_, v_ = xp.astype(q, work), xp.astype(k, work), xp.astype(v, work)
    scores = (q_ @ xp.matrix_transpose(k_)) * scale  # (..., L, S)
    out, weights = attend(scores, v_, mask, xp)  # (..., L, dv), (..., L, S)
    if return_weights:
        return xp.astype(out, q.dtype), xp.astype(weights, q.dtype)
    return xp.astype(out, q.dtype)
