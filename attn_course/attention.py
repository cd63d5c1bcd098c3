"""Scaled dot-product attention (Vaswani et al. 2017).

    Attention(Q, K, V) = softmax(Q K^T * scale) V,    scale = 1 / sqrt(d)

Each query row ``q_i`` is compared with every key ``k_j`` by a dot product;
the scores are scaled (so their spread does not grow with ``d``), turned into
weights by a softmax over the keys, and the output row is the weighted sum of
the value rows. Shapes follow torch: ``q (..., L, d)``, ``k (..., S, d)``,
``v (..., S, dv)`` give an output ``(..., L, dv)`` and weights ``(..., L, S)``.

The code below is the array-API version (NumPy, CuPy, torch alike): it builds
the ``(..., L, S)`` scores and weights. For NumPy inputs, when the weights are
not asked for, the same formula runs through a CPU fast path
(``_numpy_attention``: threads over heads, cache-sized blocks of query rows,
causal blocks cut at the diagonal) that returns the same numbers to rounding.
"""

from __future__ import annotations

import array_api_compat

from ._numpy_attention import dense_attention
from .backend import get_namespace
from .masks import causal, materialize
from .softmax import masked_softmax
from .validation import (
    as_array,
    as_float_array,
    broadcast_batch,
    check_bool,
    check_mask,
    check_scale,
    compute_dtype,
    require_finite,
    require_ndim,
    require_same_dtype,
    shape_of,
)

__all__ = ["scaled_dot_product_attention"]


def check_qkv(q, k, v, names=("q", "k", "v"), same_feature_size=True, check_finite=True):
    """Validate ``q (..., L, d)``, ``k (..., S, d)``, ``v (..., S, dv)``.

    ``names`` are the argument names used in messages; with
    ``same_feature_size=False`` q and k may differ in their last axis (additive
    attention projects them first). Returns ``(q, k, v, xp, batch)`` where
    ``batch`` is the broadcast of their leading dimensions. ``check_finite=False``
    leaves the values for the caller to check (see ``require_all_finite``).
    """
    q_name, k_name, v_name = names
    q, k, v = as_float_array(q_name, q), as_float_array(k_name, k), as_float_array(v_name, v)
    xp = get_namespace(q, k, v)
    require_ndim(q_name, q, 2, "(..., L, d)")
    require_ndim(k_name, k, 2, "(..., S, d)")
    require_ndim(v_name, v, 2, "(..., S, dv)")
    require_same_dtype(**{q_name: q, k_name: k, v_name: v})
    if same_feature_size and q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"{q_name} and {k_name} must have the same feature size d (last axis): "
            f"{q_name} {shape_of(q)} is (..., L, d), {k_name} {shape_of(k)} is (..., S, d)"
        )
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(
            f"{k_name} and {v_name} must have the same number of positions S (second-last axis): "
            f"{k_name} {shape_of(k)} is (..., S, d), {v_name} {shape_of(v)} is (..., S, dv)"
        )
    for name, x in ((q_name, q), (k_name, k), (v_name, v)):
        if 0 in shape_of(x)[-2:]:
            raise ValueError(f"{name} has an empty sequence or feature axis: shape {shape_of(x)}")
    batch = broadcast_batch(**{q_name: shape_of(q)[:-2], k_name: shape_of(k)[:-2], v_name: shape_of(v)[:-2]})
    if check_finite:
        require_all_finite(xp, **{q_name: q, k_name: k, v_name: v})
    return q, k, v, xp, batch


def require_all_finite(xp, **arrays):
    """Refuse NaN and infinities in any of ``arrays``, with one question to the device.

    On a GPU each ``bool()`` waits for the device, so one combined test comes
    first; only when something is wrong is each argument looked at to name it.
    """
    flags = [xp.all(xp.isfinite(x)) for x in arrays.values()]
    all_finite = flags[0]
    for flag in flags[1:]:
        all_finite = all_finite & flag
    if not bool(all_finite):
        for name, x in arrays.items():
            require_finite(name, x, xp)


def attention_mask(mask, is_causal, batch, L: int, S: int, xp, like):
    """The boolean mask to apply (or None): ``mask`` checked against ``(*batch, L, S)``, AND causal."""
    is_causal = check_bool("is_causal", is_causal)
    if mask is not None:
        mask = check_mask(mask, (*batch, L, S), "the attention scores (..., L, S)", xp)
    if is_causal:
        causal_part = materialize(causal(), L, S, like=like)  # (L, S): key j <= query i
        mask = causal_part if mask is None else mask & causal_part
    return mask


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
    if mask is not None:
        mask = check_mask(mask, (*batch, L, S), "the attention scores (..., L, S)", xp)
    scale = check_scale(scale, d)
    return_weights = check_bool("return_weights", return_weights)

    if not return_weights and all(array_api_compat.is_numpy_array(x) for x in (q, k, v, mask) if x is not None):
        return dense_attention(q, k, v, mask, is_causal, scale, batch).astype(q.dtype, copy=False)

    mask = attention_mask(mask, is_causal, batch, L, S, xp, like=q)
    work = compute_dtype(q.dtype, xp)
    q_, k_, v_ = xp.astype(q, work), xp.astype(k, work), xp.astype(v, work)
    scores = (q_ @ xp.matrix_transpose(k_)) * scale  # (..., L, S)
    weights = masked_softmax(scores, -1, mask, xp)  # (..., L, S)
    out = xp.astype(weights @ v_, q.dtype)  # (..., L, dv)
    if return_weights:
        return out, xp.astype(weights, q.dtype)
    return out
