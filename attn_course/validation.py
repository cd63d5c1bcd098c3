"""Argument checks shared by the whole package: validation of what a public function is given.

Every public function validates what it is given before computing, so that a
mistake (a transposed key matrix, a mask of the wrong shape, integer tokens
where vectors were meant) raises a ``ValueError``/``TypeError`` that names the
argument and the shapes seen, instead of broadcasting into a silent wrong answer.
"""

from __future__ import annotations

import math
import numbers

import array_api_compat
import numpy as np

from .backend import get_namespace


def shape_of(x) -> tuple[int, ...]:
    return tuple(map(int, x.shape))


def dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


def as_array(name: str, x):
    """``x`` if it is an array; nested lists and Python numbers become NumPy arrays."""
    if x is None:
        raise TypeError(f"{name} must be an array; got None")
    if array_api_compat.is_array_api_obj(x):
        return x
    try:
        return np.asarray(x)
    except Exception as err:  # ragged lists and the like
        raise TypeError(f"{name} must be an array or a nested list of numbers; got {type(x).__name__}") from err


def as_float_array(name: str, x):
    """``x`` as an array of a real floating dtype; integers, booleans, complex refused."""
    x = as_array(name, x)
    xp = get_namespace(x)
    if not xp.isdtype(x.dtype, "real floating"):
        hint = f" (convert it first, e.g. {name}.astype(np.float32))" if xp.isdtype(x.dtype, "integral") else ""
        raise TypeError(
            f"{name} must have a floating dtype (float16, float32 or float64); got {dtype_name(x.dtype)}{hint}"
        )
    return x


def require_ndim(name: str, x, min_ndim: int, layout: str):
    if x.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimensions {layout}; got shape {shape_of(x)}")


def require_same_dtype(**arrays):
    dtypes = {name: a.dtype for name, a in arrays.items()}
    if len(set(dtypes.values())) > 1:
        seen = ", ".join(f"{name} {dtype_name(d)}" for name, d in dtypes.items())
        raise TypeError(f"{', '.join(arrays)} must share one floating dtype; got {seen}")


def require_finite(name: str, x, xp, allow_neg_inf: bool = False):
    """Refuse NaN and infinities (``-inf`` may be allowed: it is how a score is masked out)."""
    bad = xp.isnan(x) | (x == math.inf) if allow_neg_inf else ~xp.isfinite(x)
    if bool(xp.any(bad)):
        what = "NaN or +inf" if allow_neg_inf else "NaN or infinite"
        raise ValueError(f"{name} contains {what} values (shape {shape_of(x)}); attention needs finite inputs")


def broadcast_batch(**shapes) -> tuple[int, ...]:
    """The broadcast of several leading (batch) shapes, or a ValueError naming them all."""
    try:
        return tuple(np.broadcast_shapes(*shapes.values()))
    except ValueError:
        seen = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(f"the leading (batch) dimensions do not broadcast: {seen}") from None


def check_int(name: str, value, minimum: int | None = None) -> int:
    """An integer argument (Python or NumPy int, not bool), at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer; got {value!r} ({type(value).__name__})")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {value}")
    return value


def check_bool(name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False; got {value!r} ({type(value).__name__})")
    return bool(value)


def check_scale(scale, d: int) -> float:
    """The score scale: ``1/sqrt(d)`` by default, else a finite real number."""
    if scale is None:
        return 1.0 / math.sqrt(d)
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a real number or None; got {scale!r} ({type(scale).__name__})")
    if not math.isfinite(float(scale)):
        raise ValueError(f"scale must be finite; got {scale!r}")
    return float(scale)


def broadcasts_without_enlarging(shape, target_shape) -> bool:
    """True when an array of ``shape`` broadcasts to ``target_shape`` and the result is ``target_shape`` itself."""
    if len(shape) > len(target_shape):
        return False
    try:
        return tuple(np.broadcast_shapes(tuple(shape), tuple(target_shape))) == tuple(target_shape)
    except ValueError:
        return False


def check_mask(mask, target_shape: tuple[int, ...], what: str, xp, min_ndim: int = 2):
    """A boolean mask that broadcasts to ``target_shape`` without enlarging it.

    ``what`` names the target in messages, e.g. ``"the scores (..., L, S)"``.
    Attention masks need ``min_ndim=2``: a 1-d mask would be ambiguous
    between queries and keys.
    Returns the mask (an array of the namespace ``xp``).
    """
    mask = as_array("mask", mask)
    if not xp.isdtype(mask.dtype, "bool"):
        raise TypeError(
            f"mask must be boolean (True = may attend); got dtype {dtype_name(mask.dtype)}. "
            "An additive float mask (0 / -inf) is not accepted: use mask = (additive == 0)"
        )
    if mask.ndim < min_ndim:
        raise ValueError(
            f"mask must have at least 2 dimensions (..., L, S); got shape {shape_of(mask)}. "
            "For a mask over keys only, add the query axis: mask[None, :]"
        )
    if not broadcasts_without_enlarging(shape_of(mask), target_shape):
        raise ValueError(
            f"mask of shape {shape_of(mask)} does not broadcast to {what} {tuple(target_shape)}; "
            "each of its dimensions must be 1 or equal the matching one"
        )
    return mask


def compute_dtype(dtype, xp):
    """The dtype to accumulate in: float32 for float16 inputs, else the input dtype."""
    return xp.float32 if dtype == xp.float16 else dtype


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


def is_numpy(*arrays) -> bool:
    """True when every array given (None skipped) is a NumPy array: the CPU fast paths apply."""
    return all(array_api_compat.is_numpy_array(x) for x in arrays if x is not None)
