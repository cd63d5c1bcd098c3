r"""Linear attention (Katharopoulos et al. 2020, "Transformers are RNNs").

Softmax attention weighs value ``v_j`` for query ``i`` by ``exp(q_i . k_j)``.
Replace that similarity by a dot product of *features*,
``sim(q_i, k_j) = phi(q_i) . phi(k_j)`` with a positive feature map

    phi(x) = elu(x) + 1 = x + 1 if x > 0 else exp(x)        (elementwise, > 0)

and the output becomes

    out_i = sum_j (phi(q_i) . phi(k_j)) v_j / sum_j phi(q_i) . phi(k_j)
          = phi(q_i) . S / phi(q_i) . z,     S = sum_j phi(k_j) v_j^T  (d x dv),   z = sum_j phi(k_j)  (d)

The second line is the whole trick: matrix products are associative, so
``(phi(Q) phi(K)^T) V``, which needs the ``(L, S)`` matrix of similarities,
equals ``phi(Q) (phi(K)^T V)``, which needs only the ``(d, dv)`` matrix ``S``.

Costs, for ``L`` queries, ``S`` keys, feature size ``d`` and value size ``dv``:

=========================  ==================  ====================
                           time                extra memory
=========================  ==================  ====================
softmax attention          O(L S d)            O(L S) scores
linear, non-causal         O((L + S) d dv)     O(d dv) for S and z
linear, causal (chunked)   O(L d (C + dv))     O(C^2 + d dv)
=========================  ==================  ====================

so linear attention wins once ``L`` is larger than about ``d``
(``python -m attn_course.bench cpu`` measures the crossover).

**Causal.** Query ``i`` may only use keys ``j <= i``: ``S`` and ``z`` become
prefix sums, ``S_i = S_{i-1} + phi(k_i) v_i^T`` and ``z_i = z_{i-1} + phi(k_i)``
(an RNN whose state is ``(S_i, z_i)``). Storing every ``S_i`` costs
``O(L d dv)``; instead the sequence is cut into chunks of ``C`` positions. A
chunk's queries see the state carried from all earlier chunks plus, inside the
chunk, a small ``C x C`` causal product:

    num_i = phi(q_i) . S_before + sum_{c0 <= j <= i} (phi(q_i) . phi(k_j)) v_j
    den_i = phi(q_i) . z_before + sum_{c0 <= j <= i}  phi(q_i) . phi(k_j)

after which the chunk's keys are added to the state. Same result, memory
``O(C^2 + d dv)`` per head. As in the rest of the package, causal is
top-left aligned: query ``i`` sees keys ``j <= i`` also when ``L != S``.
"""

from __future__ import annotations

import array_api_compat

from .validation import check_bool, check_qkv, compute_dtype, dtype_name, shape_of

__all__ = ["elu_feature_map", "linear_attention"]

CHUNK = 128  # positions per chunk of the causal prefix sums


def elu_feature_map(x, xp=None):
    """``phi(x) = elu(x) + 1``: ``x + 1`` for ``x > 0``, ``exp(x)`` otherwise; always > 0.

    Computed as ``exp(min(x, 0)) + max(x, 0)``, which is the same for both
    signs and never evaluates ``exp`` of a large positive number.
    """
    xp = array_api_compat.array_namespace(x) if xp is None else xp
    return xp.exp(xp.clip(x, max=0.0)) + xp.clip(x, min=0.0)


def _feature_map(feature_map):
    if isinstance(feature_map, str):
        if feature_map.lower() == "elu":
            return elu_feature_map
        raise ValueError(f"feature_map must be 'elu' (phi(x) = elu(x) + 1) or a callable phi(x); got {feature_map!r}")
    if callable(feature_map):
        return lambda x, xp: feature_map(x)
    raise TypeError(
        f"feature_map must be 'elu' or a callable phi(x) returning positive features; got {type(feature_map).__name__}"
    )


def _apply_feature_map(phi, name: str, x, xp):
    features = phi(x, xp)
    if not array_api_compat.is_array_api_obj(features) or shape_of(features) != shape_of(x):
        seen = shape_of(features) if hasattr(features, "shape") else type(features).__name__
        raise ValueError(f"feature_map must keep the shape of {name} {shape_of(x)}; got {seen}")
    if not xp.isdtype(features.dtype, "real floating"):
        raise TypeError(f"feature_map must return floating values; got {dtype_name(features.dtype)} for {name}")
    if bool(xp.any(features < 0)) or not bool(xp.all(xp.isfinite(features))):
        raise ValueError(f"feature_map must return finite features >= 0 (they weigh the values); {name} broke this")
    return xp.astype(features, x.dtype, copy=False)


def linear_attention(q, k, v, *, causal=False, feature_map="elu"):
    """Linear attention ``phi(q_i) . S / phi(q_i) . z`` with ``S = sum_j phi(k_j) v_j^T``, ``z = sum_j phi(k_j)``.

    q: (..., L, d), k: (..., S, d), v: (..., S, dv); leading dimensions broadcast.
    causal: query ``i`` uses keys ``j <= i`` only (prefix sums, in chunks).
    feature_map: ``"elu"`` for ``phi(x) = elu(x) + 1`` (Katharopoulos et al.),
        or a callable ``phi(x)`` returning features >= 0 of the same shape.
    Returns out (..., L, dv). A query whose similarities are all zero (possible
    only with a custom feature map, or causal with no key) gets a zero row.
    dtype is kept; float16 is computed in float32.
    """
    q, k, v, xp, _ = check_qkv(q, k, v)
    causal = check_bool("causal", causal)
    phi = _feature_map(feature_map)
    dtype, work = q.dtype, compute_dtype(q.dtype, xp)
    q, k, v = (xp.astype(x, work, copy=False) for x in (q, k, v))  # no copy when already `work`
    phi_q = _apply_feature_map(phi, "q", q, xp)  # (..., L, d)
    phi_k = _apply_feature_map(phi, "k", k, xp)  # (..., S, d)
    if causal:
        numerator, denominator = _causal_sums(phi_q, phi_k, v, xp)
    else:
        kv_state = xp.matrix_transpose(phi_k) @ v  # S = phi(K)^T V: (..., d, dv)
        key_sum = xp.sum(phi_k, axis=-2)[..., None]  # z: (..., d, 1)
        numerator = phi_q @ kv_state  # (..., L, dv)
        denominator = phi_q @ key_sum  # (..., L, 1)
    out = numerator / xp.where(denominator > 0, denominator, xp.ones_like(denominator))
    return xp.astype(out, dtype, copy=False)


def _causal_sums(phi_q, phi_k, v, xp):
    """Numerator (..., L, dv) and denominator (..., L, 1) of causal linear attention, chunk by chunk."""
    L, S = shape_of(phi_q)[-2], shape_of(phi_k)[-2]
    device = array_api_compat.device(phi_q)
    kv_state = None  # sum of phi(k_j) v_j^T over the keys of earlier chunks: (..., d, dv)
    key_sum = None  # sum of phi(k_j) over the same keys: (..., d, 1)
    numerators, denominators = [], []
    for start in range(0, L, CHUNK):
        stop = min(L, start + CHUNK)
        phi_q_chunk = phi_q[..., start:stop, :]  # (..., C, d)
        numerator = denominator = None
        if kv_state is not None:  # keys j < start, all visible
            numerator, denominator = phi_q_chunk @ kv_state, phi_q_chunk @ key_sum
        keys_stop = min(S, stop)
        if start < keys_stop:  # keys start <= j <= i inside the chunk
            phi_k_chunk, v_chunk = phi_k[..., start:keys_stop, :], v[..., start:keys_stop, :]
            i = xp.reshape(xp.arange(start, stop, device=device), (-1, 1))
            j = xp.reshape(xp.arange(start, keys_stop, device=device), (1, -1))
            similarity = phi_q_chunk @ xp.matrix_transpose(phi_k_chunk)  # (..., C, Ck)
            similarity = xp.where(j <= i, similarity, xp.zeros_like(similarity))
            local_numerator = similarity @ v_chunk  # (..., C, dv)
            local_denominator = xp.sum(similarity, axis=-1, keepdims=True)  # (..., C, 1)
            numerator = local_numerator if numerator is None else numerator + local_numerator
            denominator = local_denominator if denominator is None else denominator + local_denominator
            chunk_kv = xp.matrix_transpose(phi_k_chunk) @ v_chunk  # (..., d, dv)
            chunk_sum = xp.sum(phi_k_chunk, axis=-2)[..., None]  # (..., d, 1)
            kv_state = chunk_kv if kv_state is None else kv_state + chunk_kv
            key_sum = chunk_sum if key_sum is None else key_sum + chunk_sum
        numerators.append(numerator)
        denominators.append(denominator)
    return xp.concat(numerators, axis=-2), xp.concat(denominators, axis=-2)
