"""Positional information: telling attention where each token is.

Attention by itself is permutation-equivariant: shuffle the tokens and the
outputs shuffle the same way, so "dog bites man" and "man bites dog" look
alike. Two ways to add order:

**Sinusoidal encodings** (Vaswani et al. 2017) are *added* to the token
vectors. Pair ``i`` of features (``i = 0 .. d/2 - 1``) is a sine and a cosine
of the position at its own frequency ``omega_i = 10000^(-2i/d)``::

    PE[pos, 2i]     = sin(pos * omega_i) = sin(pos / 10000^(2i/d))
    PE[pos, 2i + 1] = cos(pos * omega_i) = cos(pos / 10000^(2i/d))

from one turn every ``2 pi`` positions (``i = 0``) down to one every
``2 pi * 10000`` positions: like the hands of a clock, fast ones and slow ones.

**Rotary embeddings, RoPE** (Su et al. 2021, RoFormer) *rotate* queries and
keys instead. Feature pair ``(x_2i, x_2i+1)`` of the token at position ``m``
turns by the angle ``m * theta_i``, ``theta_i = base^(-2i/d)``::

    x'_2i     = x_2i cos(m theta_i) - x_2i+1 sin(m theta_i)
    x'_2i+1   = x_2i sin(m theta_i) + x_2i+1 cos(m theta_i)

Writing the pair as a complex number ``z_i = x_2i + i x_2i+1`` this is
``z_i * exp(i m theta_i)``. A dot product of a query rotated to position
``m`` and a key rotated to ``n`` sums ``Re(q_i conj(k_i) exp(i (m - n) theta_i))``:
it depends on the positions only through the offset ``m - n``. Attention
scores become relative, and rotations keep every vector's length.

**ALiBi** (Press et al. 2022, "Train Short, Test Long") adds nothing to the
tokens: each head ``h`` subtracts a penalty proportional to the distance from
its scores, a bias for ``scaled_dot_product_attention(..., bias=...)``::

    score_h(i, j) = q_i . k_j / sqrt(d) - m_h * |p_i - p_j|

The slopes ``m_h`` form a geometric sequence. For ``n`` heads, ``n`` a power
of two, ``m_h = r^h`` for ``h = 1 .. n`` with ``r = 2^(-8/n)`` (8 heads:
1/2, 1/4, ..., 1/256). For other ``n`` the paper takes the ``2^k`` slopes of
the largest power of two ``2^k < n``, then the remaining ``n - 2^k`` from the
sequence for ``2^(k+1)`` heads, every other one starting with its first
(``r' = 2^(-8/2^(k+1))``: ``r'^1, r'^3, r'^5, ...``), which fall between the
first ones. Steep heads look near, shallow heads far.
"""

from __future__ import annotations

import math
import numbers

import array_api_compat
import numpy as np

from .backend import creation_namespace, get_namespace
from .validation import (
    as_array,
    as_float_array,
    check_int,
    compute_dtype,
    dtype_name,
    require_finite,
    require_ndim,
    shape_of,
)

__all__ = ["alibi_bias", "alibi_slopes", "apply_rope", "sinusoidal_encoding"]

FLOAT_NAMES = ("float16", "float32", "float64")


def _float_dtype(dtype, xp):
    """The dtype of ``xp`` named by ``dtype`` (a name, a NumPy or an ``xp`` dtype); floating only."""
    if isinstance(dtype, str):
        name = dtype
    else:
        try:
            name = np.dtype(dtype).name
        except TypeError:
            name = dtype_name(dtype)
    if name not in FLOAT_NAMES:
        raise TypeError(f"dtype must be one of {', '.join(FLOAT_NAMES)}; got {dtype!r}")
    return getattr(xp, name)


def sinusoidal_encoding(n: int, d: int, *, dtype="float32", like=None):
    """The ``(n, d)`` sinusoidal position encodings of positions ``0 .. n - 1``.

    ``PE[pos, 2i] = sin(pos / 10000^(2i/d))``, ``PE[pos, 2i+1] = cos(pos / 10000^(2i/d))``
    (sine and cosine interleaved). ``d`` must be even. Added to token vectors
    ``(..., n, d)`` before the first layer.
    dtype: ``"float16"``, ``"float32"`` (default) or ``"float64"`` (a name or a dtype);
    computed in float64 and rounded once.
    like: an array, ``"numpy"`` or ``"cupy"``: the library of the result (NumPy by default).
    """
    n = check_int("n", n, minimum=1)
    d = check_int("d", d, minimum=1)
    if d % 2 != 0:
        raise ValueError(f"d must be even (sine and cosine come in pairs); got d={d}")
    xp, device = creation_namespace(like)
    out_dtype = _float_dtype(dtype, xp)
    positions = xp.arange(n, dtype=xp.float64, device=device)  # (n,)
    exponents = xp.arange(0, d, 2, dtype=xp.float64, device=device) / d  # (d/2,): 2i/d
    frequencies = xp.exp(-math.log(10000.0) * exponents)  # (d/2,): 10000^(-2i/d)
    angles = positions[:, None] * frequencies[None, :]  # (n, d/2)
    pairs = xp.stack([xp.sin(angles), xp.cos(angles)], axis=-1)  # (n, d/2, 2)
    return xp.astype(xp.reshape(pairs, (n, d)), out_dtype)  # (n, d): sin, cos, sin, cos, ...


def _check_base(base) -> float:
    if isinstance(base, bool) or not isinstance(base, numbers.Real):
        raise TypeError(f"base must be a real number; got {base!r} ({type(base).__name__})")
    base = float(base)
    if not (math.isfinite(base) and base > 0):
        raise ValueError(f"base must be a finite number > 0; got {base!r}")
    return base


def _check_positions(positions, x, xp):
    """``positions`` as a float64 array of shape broadcastable to ``x.shape[:-1]`` = ``(..., L)``."""
    positions = as_array("positions", positions)
    get_namespace(x, positions)  # one library for all inputs
    if not (xp.isdtype(positions.dtype, "integral") or xp.isdtype(positions.dtype, "real floating")):
        raise TypeError(f"positions must hold integers or real numbers; got dtype {dtype_name(positions.dtype)}")
    target = shape_of(x)[:-1]  # (..., L)
    fits = 1 <= positions.ndim <= len(target) and positions.shape[-1] == target[-1]
    if fits:
        try:
            fits = tuple(np.broadcast_shapes(shape_of(positions), target)) == target
        except ValueError:
            fits = False
    if not fits:
        raise ValueError(
            f"positions must have L={target[-1]} entries in its last axis and broadcast to (..., L) = {target} "
            f"without enlarging it; got positions {shape_of(positions)} for x {shape_of(x)}"
        )
    if xp.isdtype(positions.dtype, "real floating"):
        require_finite("positions", positions, xp)
    return xp.astype(positions, xp.float64)


def apply_rope(x, positions=None, base: float = 10000.0):
    """Rotary position embedding of ``x (..., L, d)`` over its last axis (``d`` even).

    Feature pair ``(2i, 2i+1)`` of the row at position ``m`` is rotated by the
    angle ``m * base^(-2i/d)``:
    ``x'_2i = x_2i cos - x_2i+1 sin``, ``x'_2i+1 = x_2i sin + x_2i+1 cos``.
    Apply it to queries and keys (not values): the score ``rope(q, m) . rope(k, n)``
    then depends only on the offset ``m - n``, and every row keeps its length.

    positions: default ``0 .. L-1``; otherwise integers or finite reals whose last
    axis has the ``L`` entries and whose shape broadcasts to ``(..., L)``, e.g.
    ``(L,)`` or one row per sequence ``(B, L)``.
    base: the longest wavelength's scale, a finite number > 0.
    Returns an array like ``x`` (library, shape, dtype); float16 is computed in float32.
    Angles are computed in float64 so that long positions stay exact.
    """
    x = as_float_array("x", x)
    xp = get_namespace(x)
    require_ndim("x", x, 2, "(..., L, d)")
    *batch, L, d = shape_of(x)
    if d == 0 or d % 2 != 0:
        raise ValueError(
            f"the last axis of x (d) must be even and > 0 (features are rotated in pairs); got x {shape_of(x)}"
        )
    base = _check_base(base)
    device = array_api_compat.device(x)
    if positions is None:
        positions = xp.arange(L, dtype=xp.float64, device=device)  # (L,)
    else:
        positions = _check_positions(positions, x, xp)  # (..., L)

    exponents = xp.arange(0, d, 2, dtype=xp.float64, device=device) / d  # (d/2,): 2i/d
    frequencies = xp.exp(-math.log(base) * exponents)  # (d/2,): theta_i = base^(-2i/d)
    angles = positions[..., None] * frequencies  # (..., L, d/2)
    work = compute_dtype(x.dtype, xp)
    cos, sin = xp.astype(xp.cos(angles), work), xp.astype(xp.sin(angles), work)  # (..., L, d/2)

    pairs = xp.reshape(xp.astype(x, work), (*batch, L, d // 2, 2))  # (..., L, d/2, 2)
    even, odd = pairs[..., 0], pairs[..., 1]  # (..., L, d/2) each
    rotated = xp.stack([even * cos - odd * sin, even * sin + odd * cos], axis=-1)  # (..., L, d/2, 2)
    return xp.astype(xp.reshape(rotated, (*batch, L, d)), x.dtype)  # (..., L, d)


# --------------------------------------------------------------------------- ALiBi


def _power_of_two_slopes(num_heads: int) -> list[float]:
    """``r^1 .. r^n`` with ``r = 2^(-8/n)``: the slopes for ``n`` a power of two."""
    ratio = 2.0 ** (-8.0 / num_heads)
    return [ratio ** (h + 1) for h in range(num_heads)]


def alibi_slopes(num_heads: int, *, like=None):
    """ALiBi's ``(num_heads,)`` float64 slopes ``m_h`` (Press et al. 2022).

    A power of two ``n``: ``2^(-8h/n)`` for ``h = 1 .. n``. Otherwise, with ``2^k``
    the largest power of two below ``n``: the ``2^k`` slopes of ``2^k`` heads,
    then the first ``n - 2^k`` of the odd-numbered slopes of ``2^(k+1)`` heads
    (``2^(-8h/2^(k+1))`` for ``h = 1, 3, 5, ...``).
    like: an array, ``"numpy"`` or ``"cupy"``: the library of the result (NumPy by default).
    """
    num_heads = check_int("num_heads", num_heads, minimum=1)
    below = 1 << (num_heads.bit_length() - 1)  # the largest power of two <= num_heads
    slopes = _power_of_two_slopes(below)
    if below < num_heads:
        slopes += _power_of_two_slopes(2 * below)[0::2][: num_heads - below]  # h = 1, 3, 5, ... of 2^(k+1) heads
    xp, device = creation_namespace(like)
    return xp.asarray(slopes, dtype=xp.float64, device=device)  # (num_heads,)


def _check_position_list(name: str, positions):
    positions = as_array(name, positions)
    xp = get_namespace(positions)
    if positions.ndim != 1 or not (
        xp.isdtype(positions.dtype, "integral") or xp.isdtype(positions.dtype, "real floating")
    ):
        raise ValueError(
            f"{name} must be a 1-d array of positions (integers or reals); got shape {shape_of(positions)}, "
            f"dtype {dtype_name(positions.dtype)}"
        )
    if xp.isdtype(positions.dtype, "real floating"):
        require_finite(name, positions, xp)
    return positions


def alibi_bias(num_heads: int, query_positions, key_positions, *, dtype="float32"):
    """ALiBi's ``(num_heads, L, S)`` bias ``-m_h * |p_i - p_j|`` for ``scaled_dot_product_attention(..., bias=)``.

    query_positions: (L,) the positions of the queries; key_positions: (S,) those
    of the keys (integers or reals, same library; NumPy for lists). With a key/value
    cache the queries are the last positions: ``query_positions = arange(S - L, S)``.
    Combine with a causal mask for a language model (the bias alone does not hide the future).
    dtype: ``"float16"``, ``"float32"`` (default) or ``"float64"``; computed in float64.
    """
    num_heads = check_int("num_heads", num_heads, minimum=1)
    query_positions = _check_position_list("query_positions", query_positions)
    key_positions = _check_position_list("key_positions", key_positions)
    xp = get_namespace(query_positions, key_positions)
    out_dtype = _float_dtype(dtype, xp)
    slopes = alibi_slopes(num_heads, like=query_positions)  # (h,)
    p_i = xp.reshape(xp.astype(query_positions, xp.float64), (1, -1, 1))  # (1, L, 1)
    p_j = xp.reshape(xp.astype(key_positions, xp.float64), (1, 1, -1))  # (1, 1, S)
    distance = xp.abs(p_i - p_j)  # (1, L, S)
    bias = 0.0 - xp.reshape(slopes, (num_heads, 1, 1)) * distance  # (h, L, S); 0.0 - x: no "-0." printed
    return xp.astype(bias, out_dtype)
