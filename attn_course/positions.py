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

__all__ = ["apply_rope", "sinusoidal_encoding"]

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
