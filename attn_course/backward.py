r"""The backward pass of attention: the gradients of a loss with respect to q, k and v.

Training needs, for a loss whose gradient with respect to the output is
``dO = dL/dO (..., L, dv)``, the gradients ``dQ, dK, dV``. The forward pass is

    S = q k^T * scale        (..., L, S)   the scores
    P = softmax(S)           (..., L, S)   each row sums to 1 (masked pairs get 0)
    O = P v                  (..., L, dv)

and the chain rule walks it backwards, one line per forward line:

    dV = P^T dO                              O = P v is linear in v
    dP = dO v^T                              ... and linear in P
    dS = P * (dP - rowsum(dP * P))           through the softmax, row by row
    dQ = dS k * scale                        S = q k^T * scale
    dK = dS^T q * scale

The softmax line is the only one that needs thought. For one row ``p =
softmax(s)`` the Jacobian is ``dp_i / ds_j = p_i (delta_ij - p_j)``, that is
``J = diag(p) - p p^T`` (lesson 02). Its product with the row's ``dp`` is

    ds_j = sum_i dp_i p_i (delta_ij - p_j) = p_j (dp_j - sum_i dp_i p_i)

so the ``S x S`` Jacobian is never built: one dot product per row, ``D_i =
sum_j dP_ij P_ij``, does its work. Since ``O = P v``, that sum also equals
``D_i = sum_c dO_ic O_ic``: a row of ``dO`` against the same row of the
output, which is how the tiled backward computes it without P.

A masked pair has ``P = 0``, so its ``dS`` is 0 as well; a row that may attend
to nothing has ``P = 0`` throughout and gets zero gradients (never NaN).

``attention_backward`` below is the textbook version: it builds P, an ``(L,
S)`` array. ``tiled_attention_backward`` is FlashAttention-2's (Dao 2023):
the forward of ``tiled_attention(..., return_lse=True)`` keeps only each row's
log-sum-exp ``lse_i = log sum_j exp(S_ij)``, and the backward recomputes every
tile of P from it, ``P_ij = exp(S_ij - lse_i)``, one ``(block, block)`` tile at
a time: for each tile of keys it visits the tiles of queries, adds that tile's
share to ``dK`` and ``dV`` of its keys and to ``dQ`` of its queries. It computes
the scores twice (once in the forward, once here) and stores ``L`` numbers
instead of ``L * S``. Both run on any array library (NumPy, CuPy, torch).
Inputs broadcast over leading axes (k, v shared by every head) receive their
gradient summed over those axes, so each gradient has its input's shape.
"""

from __future__ import annotations

import math

import array_api_compat

from . import fast
from .attention import attention_mask
from .backend import get_namespace
from .fast import backward as fast_backward
from .layouts import ElementMask
from .softmax import masked_softmax
from .tiled import tile_mask
from .validation import (
    as_array,
    as_float_array,
    check_bool,
    check_int,
    check_qkv,
    check_scale,
    compute_dtype,
    dtype_name,
    is_numpy,
    require_finite,
    shape_of,
)

__all__ = ["attention_backward", "sum_to_shape", "tiled_attention_backward"]


def attention_backward(q, k, v, grad_out, mask=None, *, is_causal=False, scale=None):
    """The gradients of ``sum(grad_out * scaled_dot_product_attention(q, k, v, mask, ...))``: ``(dq, dk, dv)``.

    q: (..., L, d), k: (..., S, d), v: (..., S, dv); leading dimensions broadcast.
    grad_out: (*batch, L, dv), the gradient of the loss with respect to the output
        (``batch`` the broadcast leading dimensions of q, k, v).
    mask, is_causal, scale: as for ``scaled_dot_product_attention``.
    Returns dq, dk, dv with the shapes of q, k, v (summed over the axes where an
    input was broadcast). A query that may attend to nothing gets zero gradients.
    dtype is kept; float16 is computed in float32. Builds the (..., L, S) weights.
    """
    mask = None if mask is None else as_array("mask", mask)
    q, k, v, xp, batch = check_qkv(q, k, v)
    L, d = shape_of(q)[-2:]
    S, dv = shape_of(v)[-2:]
    grad_out = check_like_output("grad_out", grad_out, q, (*batch, L, dv), xp)
    if mask is not None:
        get_namespace(q, mask)  # one library for all inputs
    is_causal = check_bool("is_causal", is_causal)
    scale = check_scale(scale, d)
    mask = attention_mask(mask, is_causal, batch, L, S, xp, like=q)
    dtype = q.dtype

    if fast.enabled() and is_numpy(q, k, v, grad_out, mask):  # same lines, heads on threads, rows in cache-sized blocks
        return shaped_like(
            fast_backward.attention_backward(q, k, v, grad_out, mask, scale, batch), (q, k, v), dtype, xp
        )

    work = compute_dtype(q.dtype, xp)  # float16 is computed in float32
    q_, k_, v_, d_out = (xp.astype(x, work, copy=False) for x in (q, k, v, grad_out))
    p = masked_softmax((q_ @ xp.matrix_transpose(k_)) * scale, -1, mask, xp)  # (..., L, S): P, the forward's weights
    d_v = xp.matrix_transpose(p) @ d_out  # (..., S, dv): dV = P^T dO
    d_p = d_out @ xp.matrix_transpose(v_)  # (..., L, S): dP = dO V^T
    d_s = p * (d_p - xp.sum(d_p * p, axis=-1, keepdims=True))  # (..., L, S): through the softmax
    d_q = (d_s @ k_) * scale  # (..., L, d)
    d_k = (xp.matrix_transpose(d_s) @ q_) * scale  # (..., S, d)
    return shaped_like((d_q, d_k, d_v), (q, k, v), dtype, xp)  # summed over broadcast axes, dtype of q


def tiled_attention_backward(q, k, v, out, lse, grad_out, mask=None, *, is_causal=False, block_size=128, scale=None):
    """FlashAttention-2's backward: ``(dq, dk, dv)`` with P recomputed tile by tile from ``lse``.

    q: (..., L, d), k: (..., S, d), v: (..., S, dv); leading dimensions broadcast.
    out: (*batch, L, dv) and lse: (*batch, L), from ``tiled_attention(..., return_lse=True)``
        with the same q, k, v, mask, is_causal and scale.
    grad_out: (*batch, L, dv), the gradient of the loss with respect to ``out``.
    mask: None, a boolean array broadcastable to (..., L, S), or a predicate ``mask_fn(i, j)``.
    is_causal: also forbid keys ``j > i``; tiles above the diagonal are skipped.
    block_size: queries and keys per tile. scale: default ``1 / sqrt(d)``.
    Returns dq, dk, dv with the shapes of q, k, v, equal to ``attention_backward``'s
    up to rounding, without ever building an (L, S) array.
    """
    q, k, v, xp, batch = check_qkv(q, k, v)
    L, d = shape_of(q)[-2:]
    S, dv = shape_of(v)[-2:]
    out = check_like_output("out", out, q, (*batch, L, dv), xp)
    grad_out = check_like_output("grad_out", grad_out, q, (*batch, L, dv), xp)
    lse = check_lse(lse, (*batch, L), xp)
    is_causal = check_bool("is_causal", is_causal)
    block_size = check_int("block_size", block_size, minimum=1)
    scale = check_scale(scale, d)
    device = array_api_compat.device(q)
    element_mask = None if mask is None else ElementMask(mask, batch, L, S, xp, device)

    dtype, work = q.dtype, compute_dtype(q.dtype, xp)  # float16 is computed in float32
    q, k, v, out, grad_out, lse = (xp.astype(x, work, copy=False) for x in (q, k, v, out, grad_out, lse))
    # a row that may attend to nothing has lse = -inf: use +inf there, so that exp(s - lse) = 0, not inf
    lse = xp.where(lse == -math.inf, xp.asarray(math.inf, dtype=work, device=device), lse)[..., None]  # (..., L, 1)
    row_dot = xp.sum(grad_out * out, axis=-1, keepdims=True)  # (..., L, 1): D = rowsum(dO * O) = rowsum(dP * P)
    d_q = xp.zeros((*batch, L, d), dtype=work, device=device)
    d_k = xp.zeros((*batch, S, d), dtype=work, device=device)
    d_v = xp.zeros((*batch, S, dv), dtype=work, device=device)
    for start in range(0, S, block_size):  # one tile of keys at a time: its dK and dV stay local
        cols = slice(start, min(S, start + block_size))
        k_cols, v_cols = k[..., cols, :], v[..., cols, :]  # (..., C, d), (..., C, dv)
        for rows, allowed in query_tiles(cols, L, block_size, is_causal, element_mask, xp, device):
            q_rows, d_out_rows = q[..., rows, :], grad_out[..., rows, :]  # (..., R, d), (..., R, dv)
            s = (q_rows @ xp.matrix_transpose(k_cols)) * scale  # (..., R, C): the scores, again
            if allowed is not None:
                s = xp.where(allowed, s, xp.asarray(-math.inf, dtype=work, device=device))
            p = xp.exp(s - lse[..., rows, :])  # (..., R, C): P recomputed from the saved lse
            d_v[..., cols, :] += xp.matrix_transpose(p) @ d_out_rows  # dV += P^T dO
            d_p = d_out_rows @ xp.matrix_transpose(v_cols)  # (..., R, C): dP = dO V^T
            d_s = p * (d_p - row_dot[..., rows, :])  # (..., R, C): dS = P * (dP - D)
            d_q[..., rows, :] += (d_s @ k_cols) * scale  # dQ += dS K * scale
            d_k[..., cols, :] += (xp.matrix_transpose(d_s) @ q_rows) * scale  # dK += dS^T Q * scale
    return shaped_like((d_q, d_k, d_v), (q, k, v), dtype, xp)  # summed over broadcast axes, dtype of q


def query_tiles(cols: slice, L: int, block_size: int, is_causal: bool, element_mask, xp, device):
    """The query tiles that see the keys ``cols``: ``(rows, allowed)``, ``allowed`` None where all may attend.

    With ``is_causal`` the tiles whose every query comes before the first key
    (``i < j`` for all pairs, above the diagonal) are skipped, and the tile that
    crosses the diagonal is masked: the same tiles as the forward's ``key_tiles``.
    """
    for start in range(0, L, block_size):
        rows = slice(start, min(L, start + block_size))
        if is_causal and rows.stop - 1 < cols.start:
            continue  # above the diagonal: no query of this tile may see these keys
        yield rows, tile_mask(rows, cols, is_causal, element_mask, xp, device)


def shaped_like(grads, inputs, dtype, xp):
    """Each gradient summed to its input's shape (``sum_to_shape``) and cast to ``dtype``."""
    pairs = zip(grads, inputs, strict=True)
    return tuple(xp.astype(sum_to_shape(g, shape_of(x), xp), dtype, copy=False) for g, x in pairs)


def sum_to_shape(grad, shape: tuple[int, ...], xp):
    """``grad`` summed over the axes that broadcasting added or stretched, so that it has ``shape``.

    An input used by every head (k of shape ``(B, 1, S, d)`` against q ``(B, H, L, d)``)
    received a gradient from each head: its gradient is their sum.
    """
    extra = grad.ndim - len(shape)
    if extra > 0:
        grad = xp.sum(grad, axis=tuple(range(extra)))  # leading axes the input did not have
    stretched = tuple(axis for axis, n in enumerate(shape) if n == 1 and grad.shape[axis] != 1)
    if stretched:
        grad = xp.sum(grad, axis=stretched, keepdims=True)  # axes of size 1 that broadcasting stretched
    return grad


def check_like_output(name: str, x, q, shape: tuple[int, ...], xp):
    """``out`` or ``grad_out``: a finite array of q's library and dtype, of the output's shape ``(*batch, L, dv)``."""
    x = as_float_array(name, x)
    get_namespace(q, x)  # one library for all inputs
    if shape_of(x) != tuple(shape):
        raise ValueError(
            f"{name} must have the shape of the attention output (*batch, L, dv) = {tuple(shape)}; got {shape_of(x)}"
        )
    if x.dtype != q.dtype:
        raise TypeError(f"{name} must have the dtype of q ({dtype_name(q.dtype)}); got {dtype_name(x.dtype)}")
    require_finite(name, x, xp)
    return x


def check_lse(lse, shape: tuple[int, ...], xp):
    """The saved log-sum-exp: floating, of shape ``(*batch, L)``, no NaN or +inf (-inf marks an empty row)."""
    lse = as_float_array("lse", lse)
    if shape_of(lse) != tuple(shape):
        raise ValueError(
            f"lse must have one value per query row (*batch, L) = {tuple(shape)}; got {shape_of(lse)} "
            "(use tiled_attention(..., return_lse=True))"
        )
    require_finite("lse", lse, xp, allow_neg_inf=True)
    return lse
