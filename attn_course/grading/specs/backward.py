"""Exercises of lesson 18, the backward pass: ``solutions/18_training_attention_the_backward_pass.ipynb``.

* ``softmax_backward(p, dp)`` (debug): the gradient of the scores through a
  row-wise softmax, ``ds = p * (dp - rowsum(dp * p))``; the notebook hands the
  learner a version without the rowsum term to fix;
* ``attention_backward(q, k, v, grad_out)``: ``(dq, dk, dv)`` of
  ``softmax(q k^T / sqrt(d)) v`` by the five textbook lines, with k and v
  possibly shared by several heads (their gradients summed over those axes);
* ``tiled_backward_step(q_rows, k_cols, v_cols, grad_out_rows, lse_rows, row_dot_rows)``:
  one tile of FlashAttention-2's backward: the weights of the tile recomputed
  from the rows' log-sum-exp, and the tile's shares of dq, dk, dv;
* ``saved_for_backward(N, d, num_heads, itemsize)`` (predict, then verify): the
  bytes one attention layer keeps for its backward pass, with the weights
  ``P`` (textbook) or with the log-sum-exp only (tiled, lse in float32).

References: ``attn_course.attention_backward`` (which torch's autograd checks in
the unit tests); the tile step and the softmax backward written out in float64
(the package has no public single step); the byte counts from their formula.
"""

from __future__ import annotations

import math

import numpy as np

from ...backward import attention_backward as reference_backward
from ..judge import Case, Exercise, Mistake
from .inputs import normal_array
from .secret_inputs import draw_from, draw_int

__all__ = ["EXERCISES"]

LESSON = "18_training_attention_the_backward_pass"


# --------------------------------------------------------------------------- the softmax backward (debug)


def _softmax_backward(p, dp, *, rowsum=True, axis=-1, p_factor=True):
    """ds = p * (dp - rowsum(dp * p)), with switches for the classic mistakes."""
    p64, dp64 = np.asarray(p, dtype=np.float64), np.asarray(dp, dtype=np.float64)
    inner = dp64 - np.sum(dp64 * p64, axis=axis, keepdims=True) if rowsum else dp64
    return (p64 * inner if p_factor else inner).astype(np.asarray(p).dtype)


def _weights_case(shape, dtype=np.float32):
    def make(rng):
        scores = normal_array(rng, shape, np.float64) * 1.5
        p = np.exp(scores - scores.max(axis=-1, keepdims=True))
        p /= p.sum(axis=-1, keepdims=True)
        return p.astype(dtype), normal_array(rng, shape, dtype)

    return make


SOFTMAX_BACKWARD = Exercise(
    name="softmax_backward",
    function="softmax_backward",
    params=("p", "dp"),
    lesson=LESSON,
    reference=_softmax_backward,
    cases=(
        Case("one_row", "p, dp: float64 (1, 5): one row of weights", _weights_case((1, 5), np.float64), seed=1801),
        Case("rows", "p, dp: float32 (3, 7)", _weights_case((3, 7)), seed=1802, points=2.0),
        Case("heads", "p, dp: float32 (2, 4, 6, 5): batch and heads", _weights_case((2, 4, 6, 5)), seed=1803),
    ),
    # edge cases a learner never sees (the grader runs them after the public case of the same name passed)
    hidden={
        "rows": (
            Case(
                "one_key",
                "p, dp: float32 (4, 1): one key per row, p = 1, so the gradient is 0",
                _weights_case((4, 1)),
                seed=3080,
            ),
            Case("no_row_axis", "p, dp: float32 (6,): a single row, no leading axis", _weights_case((6,)), seed=3081),
        ),
    },
    mistakes=(
        Mistake(
            "rowsum term missing",
            "The softmax couples every weight of a row: raising one score lowers all the other weights. That is "
            "the term - p_i p_j of the Jacobian: subtract each row's sum(dp * p) from dp before multiplying by p.",
            lambda p, dp: _softmax_backward(p, dp, rowsum=False),
        ),
        Mistake(
            "sum over the wrong axis",
            "The softmax normalises along the last axis (the keys), so the sum of dp * p runs over axis=-1, one "
            "number per row (keepdims=True), not over the rows.",
            lambda p, dp: _softmax_backward(p, dp, axis=-2),
        ),
        Mistake(
            "factor p missing",
            "ds_j = p_j (dp_j - sum_i dp_i p_i): after subtracting the row's sum, multiply by p elementwise.",
            lambda p, dp: _softmax_backward(p, dp, p_factor=False),
        ),
    ),
    hints={
        "shape": "ds has the shape of p and dp: use keepdims=True on the row sum so that it broadcasts.",
        "dtype": "Keep p's dtype: float32 in, float32 out.",
    },
)


# --------------------------------------------------------------------------- the full backward


def _backward(q, k, v, grad_out, *, rowsum=True, scale_q=True, scale_k=True, transpose_v=True, transpose_k=True,
              reduce="sum"):  # fmt: skip
    """The five lines in float64 with switches for the classic mistakes; then summed to the inputs' shapes."""
    dtype = q.dtype
    q64, k64, v64, g64 = (np.asarray(x, dtype=np.float64) for x in (q, k, v, grad_out))
    scale = 1 / math.sqrt(q.shape[-1])
    scores = q64 @ np.swapaxes(k64, -1, -2) * scale
    p = np.exp(scores - scores.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)  # (..., L, S)
    dv = (np.swapaxes(p, -1, -2) if transpose_v else p) @ g64
    dp = g64 @ np.swapaxes(v64, -1, -2)
    ds = p * (dp - np.sum(dp * p, axis=-1, keepdims=True)) if rowsum else p * dp
    dq = ds @ k64 * (scale if scale_q else 1.0)
    dk = (np.swapaxes(ds, -1, -2) if transpose_k else ds) @ q64 * (scale if scale_k else 1.0)

    def to_shape(grad, shape):
        axes = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
        if not axes:
            return grad
        return np.sum(grad, axis=axes, keepdims=True) if reduce == "sum" else np.mean(grad, axis=axes, keepdims=True)

    return tuple(to_shape(g, x.shape).astype(dtype) for g, x in ((dq, q), (dk, k), (dv, v)))


def _qkv_grad(q_batch, kv_batch, L, S, d, dv, dtype=np.float32):
    def make(rng):
        batch = np.broadcast_shapes(q_batch, kv_batch)
        return (
            normal_array(rng, (*q_batch, L, d), dtype),
            normal_array(rng, (*kv_batch, S, d), dtype),
            normal_array(rng, (*kv_batch, S, dv), dtype),
            normal_array(rng, (*batch, L, dv), dtype),
        )

    return make


BACKWARD = Exercise(
    name="attention_backward",
    function="attention_backward",
    params=("q", "k", "v", "grad_out"),
    lesson=LESSON,
    reference=reference_backward,
    outputs=("dq", "dk", "dv"),
    cases=(
        Case(
            "one_head",
            "q: float64 (3, 4), k: (5, 4), v: (5, 6), grad_out: (3, 6)",
            _qkv_grad((), (), 3, 5, 4, 6, np.float64),
            seed=1811,
        ),
        Case(
            "batched_heads",
            "q: float32 (2, 3, 5, 4), k: (2, 3, 7, 4), v: (2, 3, 7, 6), grad_out: (2, 3, 5, 6)",
            _qkv_grad((2, 3), (2, 3), 5, 7, 4, 6),
            seed=1812,
        ),
        Case(
            "self_attention_square",
            "self-attention, L = S: q: float64 (6, 4), k: (6, 4), v: (6, 3), grad_out: (6, 3)",
            _qkv_grad((), (), 6, 6, 4, 3, np.float64),
            seed=1813,
            points=2.0,
        ),
        Case(
            "shared_keys_values",
            "k and v shared by the 3 heads: q: float64 (2, 3, 5, 4), k: (2, 1, 7, 4), v: (2, 1, 7, 6), "
            "grad_out: (2, 3, 5, 6)",
            _qkv_grad((2, 3), (2, 1), 5, 7, 4, 6, np.float64),
            seed=1814,
            points=2.0,
        ),
    ),
    hidden={
        "one_head": (
            Case(
                "one_key",
                "q: float64 (4, 3), k: (1, 3), v: (1, 5), grad_out: (4, 5): a single key, every weight is 1",
                _qkv_grad((), (), 4, 1, 3, 5, np.float64),
                seed=3082,
            ),
            Case(
                "one_query",
                "q: float64 (1, 3), k: (6, 3), v: (6, 2), grad_out: (1, 2): a single query",
                _qkv_grad((), (), 1, 6, 3, 2, np.float64),
                seed=3083,
            ),
        ),
    },
    mistakes=(
        Mistake(
            "rowsum term missing",
            "Through the softmax, dS = P * (dP - rowsum(dP * P)), not P * dP: every weight of a row depends on "
            "every score of the row (the - p p^T part of the Jacobian).",
            lambda *args: _backward(*args, rowsum=False),
        ),
        Mistake(
            "scale forgotten in dq",
            "The scores are q k^T * scale, so the scale multiplies both of their gradients: dq = dS k * scale.",
            lambda *args: _backward(*args, scale_q=False),
        ),
        Mistake(
            "scale forgotten in dk",
            "The scores are q k^T * scale, so the scale multiplies both of their gradients: dk = dS^T q * scale.",
            lambda *args: _backward(*args, scale_k=False),
        ),
        Mistake(
            "weights not transposed in dv",
            "out = P v: each value row j is used by every query i with weight P[i, j], so dv = P^T grad_out "
            "(swap the last two axes of P).",
            lambda *args: _backward(*args, transpose_v=False),
        ),
        Mistake(
            "dS not transposed in dk",
            "Key j received the scores S[:, j] of every query: dk = dS^T q * scale (swap the last two axes of dS).",
            lambda *args: _backward(*args, transpose_k=False),
        ),
        Mistake(
            "broadcast axes averaged",
            "A key shared by several heads gets a gradient from each of them, and the effects add up: SUM the "
            "heads' gradients over the broadcast axis (keepdims=True), do not average them.",
            lambda *args: _backward(*args, reduce="mean"),
        ),
    ),
    hints={
        "type": "Return the three gradients together, as a tuple: return dq, dk, dv.",
        "shape": "Each gradient has its input's shape. Where k or v had an axis of size 1 that broadcast over the "
        "heads, the heads' gradients are summed over that axis (np.sum(..., axis=..., keepdims=True)).",
        "dtype": "Keep q's dtype: float32 in, float32 out (math.sqrt(d), not np.sqrt(d)).",
    },
)


# --------------------------------------------------------------------------- one tile of the tiled backward


def _tile_step(q_rows, k_cols, v_cols, grad_out_rows, lse_rows, row_dot_rows, *, from_lse=True, given_dot=True,
               scaled=True):  # fmt: skip
    """One tile's (dq, dk, dv) shares in float64, with switches for the classic mistakes."""
    dtype = q_rows.dtype
    q, k, v, g, lse, dot = (np.asarray(x, dtype=np.float64) for x in (q_rows, k_cols, v_cols, grad_out_rows,
                                                                       lse_rows, row_dot_rows))  # fmt: skip
    scale = 1 / math.sqrt(q.shape[-1])
    s = q @ np.swapaxes(k, -1, -2) * (scale if scaled else 1.0)  # (..., R, C)
    if from_lse:
        p = np.exp(s - lse[..., None])
    else:  # a softmax over the tile alone
        p = np.exp(s - s.max(axis=-1, keepdims=True))
        p /= p.sum(axis=-1, keepdims=True)
    dv = np.swapaxes(p, -1, -2) @ g
    dp = g @ np.swapaxes(v, -1, -2)
    d_row = dot[..., None] if given_dot else np.sum(dp * p, axis=-1, keepdims=True)
    ds = p * (dp - d_row)
    return (ds @ k * scale).astype(dtype), (np.swapaxes(ds, -1, -2) @ q * scale).astype(dtype), dv.astype(dtype)


def _tile_case(batch, rows, cols, extra_keys, d, dv, dtype=np.float32):
    """A tile of ``rows`` queries and ``cols`` keys out of rows whose other ``extra_keys`` keys lie in other tiles."""

    def make(rng):
        q = normal_array(rng, (*batch, rows, d), np.float64)
        k = normal_array(rng, (*batch, cols + extra_keys, d), np.float64)
        v = normal_array(rng, (*batch, cols + extra_keys, dv), np.float64)
        grad_out = normal_array(rng, (*batch, rows, dv), np.float64)
        s = q @ np.swapaxes(k, -1, -2) / math.sqrt(d)  # the whole rows, (..., R, S)
        m = s.max(axis=-1, keepdims=True)
        lse = (m + np.log(np.exp(s - m).sum(axis=-1, keepdims=True)))[..., 0]  # (..., R)
        out = np.exp(s - lse[..., None]) @ v
        row_dot = np.sum(grad_out * out, axis=-1)  # (..., R): D = rowsum(dO * O)
        tile = slice(extra_keys // 2, extra_keys // 2 + cols)  # a tile in the middle of the keys
        arrays = (q, k[..., tile, :], v[..., tile, :], grad_out, lse, row_dot)
        return tuple(x.astype(dtype) for x in arrays)

    return make


TILE_STEP = Exercise(
    name="tiled_backward_step",
    function="tiled_backward_step",
    params=("q_rows", "k_cols", "v_cols", "grad_out_rows", "lse_rows", "row_dot_rows"),
    lesson=LESSON,
    reference=_tile_step,
    outputs=("dq_part", "dk_part", "dv_part"),
    cases=(
        Case(
            "middle_tile",
            "q_rows: float32 (4, 5), k_cols: (3, 5), v_cols: (3, 2), grad_out_rows: (4, 2), lse_rows and "
            "row_dot_rows: (4,); the rows have 8 more keys in other tiles",
            _tile_case((), 4, 3, 8, 5, 2),
            seed=1821,
            points=2.0,
        ),
        Case(
            "float64_tile",
            "q_rows: float64 (3, 4), k_cols: (6, 4), v_cols: (6, 7), grad_out_rows: (3, 7); 5 more keys elsewhere",
            _tile_case((), 3, 6, 5, 4, 7, np.float64),
            seed=1822,
        ),
        Case(
            "heads",
            "q_rows: float32 (2, 3, 4, 6), k_cols: (2, 3, 5, 6), v_cols: (2, 3, 5, 2), grad_out_rows: (2, 3, 4, 2); "
            "lse_rows, row_dot_rows: (2, 3, 4); 6 more keys elsewhere",
            _tile_case((2, 3), 4, 5, 6, 6, 2),
            seed=1823,
        ),
    ),
    hidden={
        "middle_tile": (
            Case(
                "one_query_row",
                "a tile of 1 query and 4 keys out of 9: q_rows float32 (1, 3), k_cols (4, 3), v_cols (4, 2), "
                "grad_out_rows (1, 2), lse_rows, row_dot_rows (1,)",
                _tile_case((), 1, 4, 5, 3, 2),
                seed=3084,
            ),
            Case(
                "one_key_column",
                "a tile of 5 queries and 1 key out of 7: q_rows float32 (5, 4), k_cols (1, 4), v_cols (1, 3), "
                "grad_out_rows (5, 3), lse_rows, row_dot_rows (5,)",
                _tile_case((), 5, 1, 6, 4, 3),
                seed=3085,
            ),
        ),
    },
    mistakes=(
        Mistake(
            "weights from a softmax of the tile alone",
            "The tile holds only some of each row's keys: a softmax over the tile would make its weights sum to 1. "
            "The row's weights are exp(scores - lse) with the lse of the WHOLE row, which you are given.",
            lambda *args: _tile_step(*args, from_lse=False),
        ),
        Mistake(
            "rowsum taken over the tile",
            "D = rowsum(dP * P) runs over all the keys of the row, not just this tile's: use the given "
            "row_dot_rows (= rowsum(grad_out * out)) for every tile.",
            lambda *args: _tile_step(*args, given_dot=False),
        ),
        Mistake(
            "scores not scaled before subtracting lse",
            "lse is the log-sum-exp of the SCALED scores: recompute the tile's scores as q k^T / sqrt(d) before "
            "exp(scores - lse).",
            lambda *args: _tile_step(*args, scaled=False),
        ),
    ),
    hints={
        "type": "Return the three shares together, as a tuple: return dq_part, dk_part, dv_part.",
        "shape": "dq_part has the shape of q_rows, dk_part of k_cols, dv_part of v_cols. lse_rows and "
        "row_dot_rows are (..., R): add an axis ([..., None]) to subtract them from a (..., R, C) tile.",
        "dtype": "Keep q_rows' dtype: float32 in, float32 out.",
    },
)


# --------------------------------------------------------------------------- predict, then verify: bytes kept


def _saved(N, d, num_heads, itemsize, *, with_out=True, p_per_head=True, lse_itemsize=4):
    inputs = (4 if with_out else 3) * N * d * itemsize * num_heads  # q, k, v and out
    weights = N * N * itemsize * (num_heads if p_per_head else 1)
    lse = N * lse_itemsize * num_heads
    return np.asarray([float(inputs + weights), float(inputs + lse)], dtype=np.float64)


SAVED = Exercise(
    name="saved_for_backward",
    function="saved_for_backward",
    params=("N", "d", "num_heads", "itemsize"),
    lesson=LESSON,
    reference=_saved,
    cases=(
        Case(
            "lesson_sizes",
            "N = 1024, d = 64, num_heads = 8, itemsize = 4 (float32)",
            lambda rng: (1024, 64, 8, 4),
            seed=1831,
            secret=lambda rng: (
                draw_from(rng, (512, 1024, 2048)),
                draw_from(rng, (32, 64, 128)),
                draw_from(rng, (4, 8, 12)),
                4,
            ),
        ),
        Case(
            "float16",
            "N = 4096, d = 128, num_heads = 16, itemsize = 2 (float16; lse stays float32)",
            lambda rng: (4096, 128, 16, 2),
            seed=1832,
            secret=lambda rng: (
                draw_from(rng, (2048, 4096, 8192)),
                draw_from(rng, (64, 128)),
                draw_from(rng, (12, 16, 32)),
                2,
            ),
            points=2.0,
        ),
        Case(
            "long_single_head",
            "N = 100000, d = 64, num_heads = 1, itemsize = 4",
            lambda rng: (100_000, 64, 1, 4),
            seed=1833,
            secret=lambda rng: (draw_int(rng, 50_000, 200_000), draw_from(rng, (64, 128)), 1, 4),
        ),
    ),
    mistakes=(
        Mistake(
            "out not counted",
            "Both backward passes need the layer's output too (for D = rowsum(dO * O), and to hand the gradient "
            "on): count q, k, v AND out, 4 arrays of (N, d) per head.",
            lambda *args: _saved(*args, with_out=False),
        ),
        Mistake(
            "weights counted once for all heads",
            "Every head has its own (N, N) weights: multiply the bytes of P by num_heads.",
            lambda *args: _saved(*args, p_per_head=False),
        ),
        Mistake(
            "lse stored at the input's itemsize",
            "The log-sum-exp is kept in float32 (4 bytes) whatever the inputs' dtype: exp(s - lse) needs its digits.",
            lambda N, d, h, itemsize: _saved(N, d, h, itemsize, lse_itemsize=itemsize),
        ),
    ),
    hints={
        "type": "Return a NumPy float64 array of two numbers: np.asarray([textbook, tiled], dtype=np.float64).",
        "shape": "Two numbers: [bytes with P, bytes with lse], shape (2,).",
        "values": "Per head: q, k, v, out are N x d numbers each (itemsize bytes), P is N x N (itemsize bytes), "
        "lse is N numbers of 4 bytes. Multiply by num_heads.",
    },
)

EXERCISES = (SOFTMAX_BACKWARD, BACKWARD, TILE_STEP, SAVED)
