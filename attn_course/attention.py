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

Two additions serve inference (lesson 19). ``bias``, a float array
broadcastable to ``(..., L, S)``, is added to the scaled scores before the
softmax, ``softmax(q k^T * scale + bias) v``: ALiBi's distance penalties and
other relative-position terms enter here (torch's float ``attn_mask``).
``enable_gqa=True`` lets ``Hq`` query heads share ``Hkv`` key/value heads
(grouped-query attention, multi-query when ``Hkv = 1``): with ``g = Hq / Hkv``,
query head ``h`` reads key/value head ``h // g``. The query heads are viewed
as ``(Hkv, g)`` groups and the key/value heads get a group axis of size 1, so
broadcasting shares them without copying the keys and values.
"""

from __future__ import annotations

import math

import array_api_compat

from . import fast
from .backend import get_namespace
from .fast import dense as fast_dense
from .softmax import masked_softmax
from .validation import (
    as_array,
    broadcasts_without_enlarging,
    check_bool,
    check_mask,
    check_qkv,
    check_scale,
    compute_dtype,
    dtype_name,
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


def _check_bias(bias, target_shape: tuple[int, ...], xp, like):
    """A float ``bias`` that broadcasts to ``target_shape`` = ``(..., L, S)`` without enlarging it."""
    bias = as_array("bias", bias)
    get_namespace(like, bias)  # one library for all inputs
    if not xp.isdtype(bias.dtype, "real floating"):
        raise TypeError(
            f"bias must be a float array added to the scores (..., L, S); got dtype {dtype_name(bias.dtype)} "
            "(a boolean mask goes in mask=...)"
        )
    if not broadcasts_without_enlarging(shape_of(bias), target_shape):
        raise ValueError(
            f"bias of shape {shape_of(bias)} does not broadcast to the attention scores (..., L, S) "
            f"{tuple(target_shape)}; each of its dimensions must be 1 or equal the matching one"
        )
    if bool(xp.any(xp.isnan(bias) | (bias == math.inf))):
        raise ValueError(f"bias contains NaN or +inf values (shape {shape_of(bias)}); -inf (never attend) is allowed")
    return bias


def _group_heads(q, k, v, extras):
    """View ``Hq`` query heads as ``(Hkv, g)`` groups sharing one key/value head each (no copy).

    q: (..., Hq, L, d) -> (..., Hkv, g, L, d); k, v: (..., Hkv, S, d) -> (..., Hkv, 1, S, d).
    ``extras`` (mask, bias or None), broadcastable to (..., Hq, L, S), get the same grouping.
    Returns the grouped arrays and ``ungroup(x)``, which turns (..., Hkv, g, L, n) back into (..., Hq, L, n).
    """
    xp = get_namespace(q, k, v)
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.ndim < 3:
            raise ValueError(f"enable_gqa needs a head axis: {name} must be (..., heads, n, d); got {shape_of(x)}")
    query_heads, kv_heads = shape_of(q)[-3], shape_of(k)[-3]
    if shape_of(v)[-3] != kv_heads:
        raise ValueError(f"k and v must have the same number of heads; got k {shape_of(k)} and v {shape_of(v)}")
    if query_heads % kv_heads != 0:
        raise ValueError(
            f"enable_gqa needs the query heads to be a multiple of the key/value heads; got q with {query_heads} "
            f"heads {shape_of(q)} and k with {kv_heads} heads {shape_of(k)}"
        )
    group = query_heads // kv_heads  # query heads per key/value head
    lead, (L, d) = shape_of(q)[:-3], shape_of(q)[-2:]
    q = xp.reshape(q, (*lead, kv_heads, group, L, d))  # (..., Hkv, g, L, d): head h = kv * g + r
    k, v = k[..., None, :, :], v[..., None, :, :]  # (..., Hkv, 1, S, d): one key/value head per group
    grouped = []
    for extra in extras:
        if extra is None or extra.ndim < 3:
            grouped.append(extra)  # (L, S) or (S,)-like: broadcasts against every head already
        elif shape_of(extra)[-3] == 1:
            grouped.append(extra[..., None, :, :])  # (..., 1, 1, L, S)
        else:
            grouped.append(xp.reshape(extra, (*shape_of(extra)[:-3], kv_heads, group, *shape_of(extra)[-2:])))

    def ungroup(x):
        return xp.reshape(x, (*shape_of(x)[:-4], query_heads, *shape_of(x)[-2:]))  # (..., Hq, L, n)

    return q, k, v, grouped, ungroup


def _check_head_counts(q, k, v, enable_gqa: bool):
    """Differing head counts are grouped-query attention: refused unless ``enable_gqa`` says so."""
    if enable_gqa or min(q.ndim, k.ndim, v.ndim) < 3:
        return
    query_heads, kv_heads = shape_of(q)[-3], shape_of(k)[-3]
    if query_heads != kv_heads and 1 not in (query_heads, kv_heads) and query_heads % kv_heads == 0:
        raise ValueError(
            f"q and k differ in their head axis (the one before (n, d)): q {shape_of(q)} has {query_heads} heads, "
            f"k {shape_of(k)} has {kv_heads}; for grouped-query attention (query heads sharing key/value heads) "
            "pass enable_gqa=True"
        )


def scaled_dot_product_attention(q, k, v, mask=None, *, is_causal=False, scale=None, return_weights=False, bias=None,
                                 enable_gqa=False):  # fmt: skip
    """``softmax(q k^T * scale + bias) v`` with an optional boolean mask.

    q: (..., L, d), k: (..., S, d), v: (..., S, dv); leading dimensions broadcast.
    mask: boolean, broadcastable to (..., L, S) without enlarging it; True = may attend.
    is_causal: also forbid keys ``j > i`` (top-left aligned, as torch does when L != S);
        combines with ``mask`` (both must allow a pair).
    scale: multiplies the scores; default ``1 / sqrt(d)``.
    bias: float, broadcastable to (..., L, S): added to the scaled scores before the softmax
        (torch's float ``attn_mask``; ``-inf`` forbids a pair). ALiBi uses it.
    enable_gqa: q (..., Hq, L, d) with k, v (..., Hkv, S, d), ``Hkv`` dividing ``Hq``:
        query head ``h`` reads key/value head ``h // (Hq // Hkv)`` (grouped-query attention).
    Returns out (..., L, dv), and the weights (..., L, S) too if ``return_weights``.
    A query that may attend to nothing gets zero weights and a zero output row.
    dtype is kept; float16 is computed in float32.
    """
    mask = None if mask is None else as_array("mask", mask)
    enable_gqa = check_bool("enable_gqa", enable_gqa)
    _check_head_counts(as_array("q", q), as_array("k", k), as_array("v", v), enable_gqa)
    if enable_gqa:  # (..., Hkv, g, L, d) queries against (..., Hkv, 1, S, d) keys: the shared heads broadcast
        q, k, v, (mask, bias), ungroup = _group_heads(q, k, v, (mask, None if bias is None else as_array("bias", bias)))
        result = scaled_dot_product_attention(
            q, k, v, mask, is_causal=is_causal, scale=scale, return_weights=return_weights, bias=bias
        )
        return tuple(ungroup(x) for x in result) if return_weights else ungroup(result)
    q, k, v, xp, batch = check_qkv(q, k, v)
    if mask is not None:
        get_namespace(q, mask)  # one library for all inputs
    L, d = shape_of(q)[-2:]
    S = shape_of(k)[-2]
    is_causal = check_bool("is_causal", is_causal)
    scale = check_scale(scale, d)
    return_weights = check_bool("return_weights", return_weights)
    mask = None if mask is None else check_mask(mask, (*batch, L, S), "the attention scores (..., L, S)", xp)
    bias = None if bias is None else _check_bias(bias, (*batch, L, S), xp, like=q)

    if fast.enabled() and is_numpy(q, k, v, mask) and bias is None and not return_weights:  # same formula, on threads
        return fast_dense.dense_attention(q, k, v, mask, is_causal, scale, batch).astype(q.dtype, copy=False)

    mask = attention_mask(mask, is_causal, batch, L, S, xp, like=q)
    work = compute_dtype(q.dtype, xp)  # float16 is computed in float32
    q_, k_, v_ = xp.astype(q, work), xp.astype(k, work), xp.astype(v, work)
    scores = (q_ @ xp.matrix_transpose(k_)) * scale  # (..., L, S)
    if bias is not None:
        scores = scores + xp.astype(bias, work)  # (..., L, S): e.g. ALiBi's -slope * |i - j|
        finite = bias > -math.inf  # a -inf bias forbids the pair, like a False in the mask
        mask = finite if mask is None else mask & finite
    out, weights = attend(scores, v_, mask, xp)  # (..., L, dv), (..., L, S)
    if return_weights:
        return xp.astype(out, q.dtype), xp.astype(weights, q.dtype)
    return xp.astype(out, q.dtype)
