"""Additive attention (Bahdanau, Cho and Bengio 2015), the attention before transformers.

    score(q, k_j) = w . tanh(q W_q + k_j W_k)
    weights = softmax over j of the scores;   output = sum_j weights_j v_j

Instead of a dot product, a small one-hidden-layer network scores each
(query, key) pair: both are projected into a shared space of size ``a``,
added, squashed by ``tanh`` and read out by the vector ``w``. It was built for
a decoder state (the query) looking at encoder states (keys and values).
Weights act on row vectors: ``x @ W_q`` maps ``(..., d_q)`` to ``(..., a)``.
There is no scaling: the network learns the size of its scores.
"""

from __future__ import annotations

from .attention import attend, attention_mask
from .backend import get_namespace
from .validation import as_array, as_float_array, check_bool, check_qkv, compute_dtype, require_finite, shape_of

__all__ = ["additive_attention"]


def _check_weights(W_q, W_k, w, query, keys):
    W_q, W_k, w = as_float_array("W_q", W_q), as_float_array("W_k", W_k), as_float_array("w", w)
    if W_q.ndim != 2 or W_k.ndim != 2 or w.ndim != 1:
        raise ValueError(
            "expected W_q (d_q, a), W_k (d_k, a) and w (a,); "
            f"got W_q {shape_of(W_q)}, W_k {shape_of(W_k)}, w {shape_of(w)}"
        )
    if not W_q.shape[1] == W_k.shape[1] == w.shape[0]:
        raise ValueError(
            f"W_q, W_k and w must share the attention size a: W_q {shape_of(W_q)} is (d_q, a), "
            f"W_k {shape_of(W_k)} is (d_k, a), w {shape_of(w)} is (a,)"
        )
    if query.shape[-1] != W_q.shape[0]:
        raise ValueError(
            f"query's last axis must equal W_q's first: query {shape_of(query)} is (..., L, d_q), "
            f"W_q {shape_of(W_q)} is (d_q, a)"
        )
    if keys.shape[-1] != W_k.shape[0]:
        raise ValueError(
            f"keys' last axis must equal W_k's first: keys {shape_of(keys)} is (..., S, d_k), "
            f"W_k {shape_of(W_k)} is (d_k, a)"
        )
    xp = get_namespace(query, W_q, W_k, w)
    for name, x in (("W_q", W_q), ("W_k", W_k), ("w", w)):
        if x.dtype != query.dtype:
            raise TypeError(f"{name} must have the dtype of query ({query.dtype}); got {x.dtype}")
        require_finite(name, x, xp)
    return W_q, W_k, w


def additive_attention(query, keys, values, W_q, W_k, w, mask=None, return_weights=False):
    """Bahdanau attention of queries over keys/values.

    query: (..., L, d_q), keys: (..., S, d_k), values: (..., S, dv)
    W_q: (d_q, a), W_k: (d_k, a), w: (a,)
    mask: boolean, broadcastable to (..., L, S) without enlarging it; True = may attend.
    Returns out (..., L, dv), and weights (..., L, S) too if ``return_weights``.
    Memory: the hidden layer is (..., L, S, a), fine for the short sequences it is taught on.
    """
    mask = None if mask is None else as_array("mask", mask)
    query, keys, values, xp, batch = check_qkv(
        query, keys, values, names=("query", "keys", "values"), same_feature_size=False
    )
    W_q, W_k, w = _check_weights(W_q, W_k, w, query, keys)
    L, S = shape_of(query)[-2], shape_of(keys)[-2]
    mask = attention_mask(mask, False, batch, L, S, xp, like=query)
    return_weights = check_bool("return_weights", return_weights)

    work = compute_dtype(query.dtype, xp)
    projected_q = xp.astype(query, work) @ xp.astype(W_q, work)  # (..., L, a)
    projected_k = xp.astype(keys, work) @ xp.astype(W_k, work)  # (..., S, a)
    hidden = xp.tanh(projected_q[..., :, None, :] + projected_k[..., None, :, :])  # (..., L, S, a)
    scores = xp.sum(hidden * xp.astype(w, work), axis=-1)  # (..., L, S)
    out, weights = attend(scores, xp.astype(values, work), mask, xp)  # (..., L, dv), (..., L, S)
    if return_weights:
        return xp.astype(out, query.dtype), xp.astype(weights, query.dtype)
    return xp.astype(out, query.dtype)
