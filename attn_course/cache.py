"""The key/value cache: what a decoder keeps so that each new token costs one row of attention.

A causal decoder's keys and values at positions ``0 .. n-1`` never change once
computed: a later token cannot alter an earlier one. Generating token ``n + 1``
therefore needs only the new position's query, key and value; the old keys and
values are read from a cache:

    k_cache <- concat(k_cache, k_new),  v_cache <- concat(v_cache, v_new)
    out_new = softmax(q_new k_cache^T * scale) v_cache             (..., t, dv)

Without the cache the whole prefix is recomputed for every token: ``O(n^2)``
work per token, ``O(n^3)`` for ``n`` tokens; with it ``O(n)`` per token.
The ``t`` new queries sit at the end of the sequence, so among themselves they
are causal with the diagonal aligned at the bottom right: new query ``i`` is
position ``S - t + i`` and sees keys ``j <= S - t + i``.

``KVCache(window=w)`` keeps only the last ``w`` positions (Mistral's rolling
buffer): position ``p`` is written to slot ``p mod w``, overwriting position
``p - w``, which no later query can see. Memory stays ``w`` positions however
long the sequence. ``sinks=s`` also keeps the first ``s`` positions for good
(StreamingLLM's attention sinks: trained heads put much of their weight on the
first tokens, and dropping them hurts). A query at position ``p`` then sees key
``j`` when

    j <= p  and  (p - j < w  or  j < s)

which is ``masks.sliding_window(w - 1, causal=True)`` (``|i - j| <= w - 1``),
OR the sink columns: a window of ``w`` positions includes the query itself.
"""

from __future__ import annotations

import array_api_compat
import numpy as np

from .backend import get_namespace, to_numpy
from .validation import as_float_array, check_int, dtype_name, require_ndim, shape_of

__all__ = ["KVCache", "decode_mask"]


def decode_mask(query_positions, key_positions, *, window: int | None = None, sinks: int = 0) -> np.ndarray:
    """``(t, n)`` boolean NumPy array: may the query at ``query_positions[i]`` see the key at ``key_positions[j]``?

    Allowed: ``key <= query`` and, with a ``window``, ``query - key < window`` or ``key < sinks``.
    Positions are absolute positions in the sequence (any order, e.g. a rolling buffer's slot order).
    """
    queries = np.asarray(query_positions, dtype=np.int64).reshape(-1, 1)  # (t, 1)
    keys = np.asarray(key_positions, dtype=np.int64).reshape(1, -1)  # (1, n)
    allowed = keys <= queries  # (t, n): causal
    if window is not None:
        allowed &= (queries - keys < window) | (keys < sinks)  # in the window, or a sink
    return allowed


class KVCache:
    """Keys and values of the positions decoded so far, for one attention layer.

    ``KVCache()`` keeps every position; ``KVCache(window=w)`` the last ``w``
    (a rolling buffer of ``w`` slots), plus the first ``sinks`` positions.
    ``append(k, v)`` with ``k (..., t, d)``, ``v (..., t, dv)`` (the leading axes,
    e.g. ``(B, heads)``, and the feature sizes fixed by the first call) adds
    ``t`` positions and returns ``(keys (..., n, d), values (..., n, dv), positions (n,))``:
    every key the new queries may need, with its absolute position (an int array
    of the keys' library). The new positions are ``length - t .. length - 1``
    (after the call); ``attention_mask(query_positions, positions)`` says which
    query sees which key.

    Attributes: ``length`` (positions appended so far), ``positions`` (those
    kept, in storage order), ``window``, ``sinks``, ``nbytes`` (bytes of the
    keys and values kept). A windowed cache stores at most ``sinks + window``
    positions, in buffers allocated once.
    """

    def __init__(self, *, window: int | None = None, sinks: int = 0):
        if window is not None:
            window = check_int("window", window, minimum=1)
        sinks = check_int("sinks", sinks, minimum=0)
        if sinks and window is None:
            raise ValueError(f"sinks={sinks} needs a window: without one every position is kept anyway")
        self.window, self.sinks = window, sinks
        self.length = 0
        self._keys = self._values = None  # buffers (..., capacity, d), (..., capacity, dv)
        self._slot_positions = np.zeros(0, dtype=np.int64)  # absolute position held by each filled slot
        self._stored = 0  # filled slots

    def __repr__(self) -> str:
        kind = "" if self.window is None else f"window={self.window}, sinks={self.sinks}, "
        return f"KVCache({kind}length={self.length}, kept={self._stored})"

    # ---------------------------------------------------------------- what it holds

    @property
    def positions(self):
        """The absolute positions of the kept keys, in storage order: an int array of the keys' library."""
        positions = self._slot_positions[: self._stored]
        if self._keys is None:
            return positions
        xp = get_namespace(self._keys)
        return xp.asarray(positions, device=array_api_compat.device(self._keys))

    @property
    def keys(self):
        """The kept keys ``(..., kept, d)`` in storage order (None before the first ``append``)."""
        return None if self._keys is None else self._keys[..., : self._stored, :]

    @property
    def values(self):
        """The kept values ``(..., kept, dv)`` in storage order (None before the first ``append``)."""
        return None if self._values is None else self._values[..., : self._stored, :]

    @property
    def batch_shape(self) -> tuple[int, ...] | None:
        """The leading axes of the keys, e.g. ``(B, num_kv_heads)``; None before the first ``append``."""
        return None if self._keys is None else shape_of(self._keys)[:-2]

    @property
    def feature_sizes(self) -> tuple[int, int] | None:
        """``(d, dv)``: the feature sizes of keys and values; None before the first ``append``."""
        return None if self._keys is None else (shape_of(self._keys)[-1], shape_of(self._values)[-1])

    @property
    def nbytes(self) -> int:
        """Bytes of the keys and values kept (``kept * (d + dv) * itemsize * prod(batch_shape)``)."""
        if self._keys is None:
            return 0
        per_position = int(np.prod(self.batch_shape, dtype=np.int64)) * sum(self.feature_sizes)
        itemsize = np.dtype(dtype_name(self._keys.dtype)).itemsize
        return self._stored * per_position * itemsize

    def attention_mask(self, query_positions, key_positions) -> np.ndarray:
        """``(t, n)`` boolean: which key each query may see, under this cache's window and sinks."""
        return decode_mask(_as_numpy_positions(query_positions), _as_numpy_positions(key_positions),
                           window=self.window, sinks=self.sinks)  # fmt: skip

    # ---------------------------------------------------------------- adding positions

    def append(self, k, v):
        """Add ``t`` positions: ``k (..., t, d)``, ``v (..., t, dv)``. Returns ``(keys, values, positions)``.

        keys (..., n, d), values (..., n, dv): what the ``t`` new queries attend
        to (the kept old positions, then the new ones; a windowed cache and one
        new position: its buffers, in slot order, nothing copied); positions (n,)
        the absolute position of each key.
        """
        k, v = self._check(k, v)
        xp = get_namespace(k, v)
        t = shape_of(k)[-2]
        new_positions = np.arange(self.length, self.length + t, dtype=np.int64)  # (t,)
        if self._keys is None:
            capacity = t if self.window is None else self.sinks + self.window
            self._keys = xp.zeros((*shape_of(k)[:-2], capacity, shape_of(k)[-1]), dtype=k.dtype, device=_device(k))
            self._values = xp.zeros((*shape_of(v)[:-2], capacity, shape_of(v)[-1]), dtype=v.dtype, device=_device(v))
            self._slot_positions = np.full(capacity, -1, dtype=np.int64)

        if self.window is None:  # keep everything: write after the last position (the buffer doubles when full)
            self._grow_to(self.length + t, xp)
            self._write(np.arange(self.length, self.length + t), k, v, new_positions)
            self.length += t
            return self.keys, self.values, self.positions

        if t == 1:  # the slot overwritten held position p - window, which query p may not see: return the buffers
            self._write(self._slots(new_positions), k, v, new_positions)
            self.length += 1
            return self.keys, self.values, self.positions

        keys = xp.concat([self.keys, k], axis=-2)  # (..., kept + t, d): the early new queries need old keys
        values = xp.concat([self.values, v], axis=-2)  # (..., kept + t, dv)
        positions = np.concatenate([self._slot_positions[: self._stored], new_positions])  # (kept + t,)
        keep = (new_positions < self.sinks) | (new_positions >= self.length + t - self.window)  # what stays stored
        kept_new = np.flatnonzero(keep)
        self._write(self._slots(new_positions[kept_new]), k[..., kept_new, :], v[..., kept_new, :],
                    new_positions[kept_new])  # fmt: skip
        self.length += t
        return keys, values, xp.asarray(positions, device=_device(k))

    def _slots(self, positions: np.ndarray) -> np.ndarray:
        """Buffer slots of absolute positions: sinks first, then ``sinks + (p - sinks) mod window``."""
        rolling = self.sinks + (positions - self.sinks) % self.window
        return np.where(positions < self.sinks, positions, rolling)

    def _write(self, slots: np.ndarray, k, v, positions: np.ndarray) -> None:
        if slots.size == 0:
            return
        if np.all(np.diff(slots) == 1):  # contiguous: a slice
            where = slice(int(slots[0]), int(slots[-1]) + 1)
        else:
            where = get_namespace(k).asarray(slots, device=_device(k))
        self._keys[..., where, :] = k
        self._values[..., where, :] = v
        self._slot_positions[slots] = positions
        self._stored = max(self._stored, int(slots.max()) + 1)

    def _grow_to(self, needed: int, xp) -> None:
        capacity = shape_of(self._keys)[-2]
        if needed <= capacity:
            return
        capacity = max(needed, 2 * capacity)  # doubling: n appends copy O(n) positions in all
        extra = capacity - shape_of(self._keys)[-2]
        pad_k = xp.zeros((*self.batch_shape, extra, shape_of(self._keys)[-1]), dtype=self._keys.dtype,
                         device=_device(self._keys))  # fmt: skip
        pad_v = xp.zeros((*self.batch_shape, extra, shape_of(self._values)[-1]), dtype=self._values.dtype,
                         device=_device(self._values))  # fmt: skip
        self._keys = xp.concat([self._keys, pad_k], axis=-2)
        self._values = xp.concat([self._values, pad_v], axis=-2)
        self._slot_positions = np.concatenate([self._slot_positions, np.full(extra, -1, dtype=np.int64)])

    def _check(self, k, v):
        k, v = as_float_array("k", k), as_float_array("v", v)
        get_namespace(k, v)  # one library
        require_ndim("k", k, 2, "(..., t, d)")
        require_ndim("v", v, 2, "(..., t, dv)")
        if shape_of(k)[:-1] != shape_of(v)[:-1]:
            raise ValueError(
                f"k (..., t, d) and v (..., t, dv) must agree in every axis but the last; got k {shape_of(k)}, "
                f"v {shape_of(v)}"
            )
        if k.dtype != v.dtype:
            raise TypeError(f"k and v must share one dtype; got k {dtype_name(k.dtype)}, v {dtype_name(v.dtype)}")
        if 0 in shape_of(k)[-2:] or shape_of(v)[-1] == 0:
            raise ValueError(
                f"k and v need at least one position and one feature; got k {shape_of(k)}, v {shape_of(v)}"
            )
        if self._keys is None:
            return k, v
        try:
            get_namespace(k, self._keys)
        except TypeError:
            raise TypeError(
                f"k is a {type(k).__module__.split('.')[0]} array but the cache holds "
                f"{type(self._keys).__module__.split('.')[0]} arrays"
            ) from None
        held_k = (*self.batch_shape, "n", self.feature_sizes[0])
        held_v = (*self.batch_shape, "n", self.feature_sizes[1])
        if shape_of(k)[:-2] != self.batch_shape or shape_of(k)[-1] != self.feature_sizes[0]:
            raise ValueError(
                f"the cache holds keys of shape {held_k}; k {shape_of(k)} differs in its leading axes (batch, heads) "
                "or its feature size d"
            )
        if shape_of(v)[-1] != self.feature_sizes[1]:
            raise ValueError(f"the cache holds values of shape {held_v}; v {shape_of(v)} has another feature size dv")
        if k.dtype != self._keys.dtype:
            raise TypeError(
                f"the cache holds {dtype_name(self._keys.dtype)} keys; got k and v of dtype {dtype_name(k.dtype)}"
            )
        return k, v


def _device(x):
    return array_api_compat.device(x)


def _as_numpy_positions(positions) -> np.ndarray:
    if array_api_compat.is_array_api_obj(positions):
        positions = to_numpy(positions)
    return np.asarray(positions, dtype=np.int64)
