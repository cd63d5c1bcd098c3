"""Multi-head attention (Vaswani et al. 2017): several small attentions side by side.

    head_i   = Attention(Q W_q[:, i], K W_k[:, i], V W_v[:, i])        i = 1 .. h
    MultiHead(Q, K, V) = concat(head_1, ..., head_h) W_o

The inputs are projected to ``d_model`` features (one matrix each for queries,
keys and values), and those features are cut into ``h`` groups of
``head_dim = d_model / h``: the columns ``i * head_dim .. (i + 1) * head_dim``
of each projection belong to head ``i``. Every head runs scaled dot-product
attention on its own group, so each can look at different positions; the head
outputs are put side by side again and mixed by the output projection ``W_o``.

Cutting and gluing are reshapes: ``split_heads`` turns ``(..., L, h * head_dim)``
into ``(..., h, L, head_dim)`` (the heads become one more batch axis, so one
batched matrix product serves all of them) and ``merge_heads`` undoes it.
``h`` heads of size ``d_model / h`` cost the same multiply-adds as one head of
size ``d_model``; what the split buys is ``h`` separate attention patterns.

Weights act on row vectors, ``x @ W_q`` with ``W_q`` of shape ``(in, out)``:
the transpose of torch's ``nn.Linear`` layout (``x @ weight.T``).

**Shared key/value heads.** With ``num_kv_heads < num_heads`` (dividing it),
``W_k`` and ``W_v`` produce only ``num_kv_heads`` heads, each read by a group of
``g = num_heads / num_kv_heads`` query heads (query head ``h`` reads key/value
head ``h // g``): grouped-query attention (Ainslie et al. 2023), multi-query
attention when ``num_kv_heads = 1`` (Shazeer 2019). The key/value cache of a
decoder shrinks by the factor ``g``.

**Decoding.** ``mha.decode(x_new, cache)`` computes the next ``t`` positions
of causal self-attention from their inputs alone: their keys and values join
a ``KVCache`` (``attn_course.cache``), their queries attend to everything in it.
"""

from __future__ import annotations

import math
import numbers

import array_api_compat
import numpy as np

from .attention import scaled_dot_product_attention
from .backend import creation_namespace, get_namespace
from .cache import KVCache
from .validation import (
    as_array,
    as_float_array,
    check_bool,
    check_int,
    check_mask,
    check_qkv,
    compute_dtype,
    dtype_name,
    require_ndim,
    shape_of,
)

__all__ = ["MultiHeadAttention", "merge_heads", "split_heads"]

PROJECTIONS = ("q", "k", "v", "o")


def split_heads(x, num_heads: int):
    """Cut the feature axis into heads: ``(..., L, num_heads * head_dim) -> (..., num_heads, L, head_dim)``.

    Head ``i`` gets features ``i * head_dim .. (i + 1) * head_dim - 1``.
    ``merge_heads`` is the exact inverse.
    """
    x = as_float_array("x", x)
    num_heads = check_int("num_heads", num_heads, minimum=1)
    require_ndim("x", x, 2, "(..., L, num_heads * head_dim)")
    *batch, L, width = shape_of(x)
    if width % num_heads != 0:
        raise ValueError(
            f"the last axis of x ({width} features) must be divisible by num_heads ({num_heads}); "
            f"got x of shape {shape_of(x)}"
        )
    xp = get_namespace(x)
    head_dim = width // num_heads
    grouped = xp.reshape(x, (*batch, L, num_heads, head_dim))  # (..., L, h, head_dim)
    n = len(batch)
    return xp.permute_dims(grouped, (*range(n), n + 1, n, n + 2))  # (..., h, L, head_dim)


def merge_heads(x):
    """Glue the heads back side by side: ``(..., num_heads, L, head_dim) -> (..., L, num_heads * head_dim)``.

    The exact inverse of ``split_heads``.
    """
    x = as_float_array("x", x)
    require_ndim("x", x, 3, "(..., num_heads, L, head_dim)")
    *batch, num_heads, L, head_dim = shape_of(x)
    xp = get_namespace(x)
    n = len(batch)
    by_position = xp.permute_dims(x, (*range(n), n + 1, n, n + 2))  # (..., L, h, head_dim)
    return xp.reshape(by_position, (*batch, L, num_heads * head_dim))  # (..., L, h * head_dim)


def _check_seed(seed) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an integer or a numpy.random.Generator; got {seed!r} ({type(seed).__name__})")
    return np.random.default_rng(check_int("seed", seed, minimum=0))


def _heads_mask(mask, num_heads: int, batch, L: int, S: int, xp, query, key):
    """The boolean mask laid out for the per-head scores ``(..., h, L, S)``.

    Accepted: ``(L, S)`` for every sequence and head; ``(..., L, S)`` with the
    rank of the output, one mask per sequence (a head axis is inserted); or
    ``(..., h or 1, L, S)`` with one more axis, one mask per head.
    """
    mask = as_array("mask", mask)
    rank = len(batch) + 2  # the rank of the output (..., L, d_model)
    if mask.ndim == 2:
        return check_mask(mask, (L, S), "the scores (L, S)", xp)
    if mask.ndim == rank:
        mask = check_mask(mask, (*batch, L, S), "the per-sequence scores (..., L, S)", xp)
        return mask[..., None, :, :]  # (..., 1, L, S): the same mask for every head
    if mask.ndim == rank + 1:
        return check_mask(mask, (*batch, num_heads, L, S), "the per-head scores (..., h, L, S)", xp)
    raise ValueError(
        f"mask must have shape (L, S), (..., L, S) with the rank of query, or (..., h, L, S) with one more axis; "
        f"got mask {shape_of(mask)} for query {shape_of(query)} and key {shape_of(key)} with h={num_heads} heads"
    )


class MultiHeadAttention:
    """Multi-head attention with its own weights, callable as ``mha(query, key, value)``.

    d_model: the feature size of inputs and output; num_heads: how many heads,
    each of ``head_dim = d_model // num_heads`` features (d_model must divide).
    num_kv_heads: key/value heads, default ``num_heads``; fewer (dividing
    ``num_heads``) gives grouped-query attention, 1 multi-query attention.
    Weights ``W_q, W_o`` are ``(d_model, d_model)`` arrays, ``W_k, W_v``
    ``(d_model, num_kv_heads * head_dim)``, in the ``(in, out)`` orientation,
    applied to row vectors: ``q = query @ W_q + b_q`` (torch's ``nn.Linear``
    stores the transpose). Biases ``b_q, b_k, b_v, b_o`` match the output sizes,
    or are None when ``bias=False``.

    Initialisation, deterministic from ``seed`` (an int or a numpy Generator),
    at the scale torch's ``nn.MultiheadAttention`` uses: ``W_q, W_k, W_v`` drawn
    Xavier-uniform as one stacked in-projection, ``U(-a, a)`` with
    ``a = sqrt(6 / (d_model + d_model + 2 num_kv_heads head_dim))``; ``W_o`` like torch's ``nn.Linear``,
    ``U(-1/sqrt(d_model), 1/sqrt(d_model))``; biases zero. Weights are float32,
    on the library of ``like`` (an array, ``"numpy"`` or ``"cupy"``; NumPy by default).
    """

    def __init__(self, d_model: int, num_heads: int, *, num_kv_heads: int | None = None, bias: bool = True, seed=0,
                 like=None):  # fmt: skip
        d_model, num_heads = self._check_sizes(d_model, num_heads)
        num_kv_heads = self._check_kv_heads(num_heads, num_kv_heads)
        bias = check_bool("bias", bias)
        rng = _check_seed(seed)
        kv_width = num_kv_heads * (d_model // num_heads)  # the features of all key (or value) heads
        in_bound = math.sqrt(6.0 / (2 * d_model + 2 * kv_width))  # Xavier on the stacked in-projection
        out_bound = 1.0 / math.sqrt(d_model)  # nn.Linear's default for the out-projection
        widths = {"q": d_model, "k": kv_width, "v": kv_width}
        weights = {name: rng.uniform(-in_bound, in_bound, (d_model, width)) for name, width in widths.items()}
        weights["o"] = rng.uniform(-out_bound, out_bound, (d_model, d_model))
        biases = {name: np.zeros(weights[name].shape[1]) for name in PROJECTIONS} if bias else None
        self._set_parameters(num_heads, weights, biases, np.float32, like, num_kv_heads)

    @staticmethod
    def _check_sizes(d_model, num_heads) -> tuple[int, int]:
        d_model = check_int("d_model", d_model, minimum=1)
        num_heads = check_int("num_heads", num_heads, minimum=1)
        if d_model % num_heads != 0:
            raise ValueError(
                f"d_model must be divisible by num_heads (each head gets d_model // num_heads features); "
                f"got d_model={d_model}, num_heads={num_heads}"
            )
        return d_model, num_heads

    @staticmethod
    def _check_kv_heads(num_heads: int, num_kv_heads) -> int:
        if num_kv_heads is None:
            return num_heads
        num_kv_heads = check_int("num_kv_heads", num_kv_heads, minimum=1)
        if num_heads % num_kv_heads != 0:
            raise ValueError(
                f"num_kv_heads must divide num_heads (each key/value head serves a group of query heads); "
                f"got num_heads={num_heads}, num_kv_heads={num_kv_heads}"
            )
        return num_kv_heads

    def _set_parameters(self, num_heads: int, weights: dict, biases: dict | None, dtype, like, num_kv_heads=None):
        """Store NumPy weights ``{name: (d_model, out)}`` (and biases) on the library of ``like``."""
        xp, device = creation_namespace(like)
        self.d_model = int(weights["q"].shape[0])
        self.num_heads = num_heads
        self.num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        self.head_dim = self.d_model // num_heads
        for name in PROJECTIONS:
            setattr(self, f"W_{name}", xp.asarray(np.asarray(weights[name], dtype=dtype), device=device))
            bias = None if biases is None else xp.asarray(np.asarray(biases[name], dtype=dtype), device=device)
            setattr(self, f"b_{name}", bias)

    @property
    def bias(self) -> bool:
        return self.b_q is not None

    def __repr__(self) -> str:
        library = type(self.W_q).__module__.split(".")[0]
        return (
            f"MultiHeadAttention(d_model={self.d_model}, num_heads={self.num_heads}, "
            f"num_kv_heads={self.num_kv_heads}, head_dim={self.head_dim}, "
            f"bias={self.bias}, dtype={dtype_name(self.W_q.dtype)}, library={library})"
        )

    def _project(self, x, name: str, work, xp):
        """``x @ W_name + b_name`` in the dtype ``work``: (..., n, d_model) -> (..., n, width of W_name)."""
        out = x @ xp.astype(getattr(self, f"W_{name}"), work, copy=False)
        bias = getattr(self, f"b_{name}")
        return out if bias is None else out + xp.astype(bias, work, copy=False)

    def __call__(self, query, key=None, value=None, mask=None, is_causal=False, return_weights=False):
        """Attend from ``query`` to ``key``/``value`` with every head.

        query: (..., L, d_model); key: (..., S, d_model), default ``query`` (self-attention);
        value: (..., S, d_model), default ``key``. Leading dimensions broadcast.
        mask: boolean, True = may attend, one of
            ``(L, S)``: the same for every sequence and head;
            ``(..., L, S)`` with as many axes as the output: one per sequence;
            ``(..., h or 1, L, S)`` with one more axis: one per head, e.g. ``masks.padding_mask``'s ``(B, 1, 1, S)``.
        is_causal: also forbid keys ``j > i``.
        Returns out (..., L, d_model), and the per-head weights (..., h, L, S) too if ``return_weights``.
        A query that may attend to nothing gets zero weights, so its output row is ``b_o`` (zero without bias).
        dtype is kept (weights are cast to it); float16 is computed in float32.
        """
        key = query if key is None else key
        value = key if value is None else value
        query, key, value, xp, batch = check_qkv(query, key, value, names=("query", "key", "value"))
        self._check_inputs(query=query, key=key, value=value)
        L, S = shape_of(query)[-2], shape_of(key)[-2]
        if mask is not None:
            get_namespace(query, mask)  # one library for all inputs
            mask = _heads_mask(mask, self.num_heads, batch, L, S, xp, query, key)
        return_weights = check_bool("return_weights", return_weights)

        work = compute_dtype(query.dtype, xp)
        q = split_heads(self._project(xp.astype(query, work), "q", work, xp), self.num_heads)  # (..., h, L, head_dim)
        k = split_heads(self._project(xp.astype(key, work), "k", work, xp), self.num_kv_heads)  # (..., h_kv, S, hd)
        v = split_heads(self._project(xp.astype(value, work), "v", work, xp), self.num_kv_heads)  # (..., h_kv, S, hd)
        heads, weights = scaled_dot_product_attention(
            q, k, v, mask, is_causal=is_causal, return_weights=True, enable_gqa=self.grouped
        )  # (..., h, L, head_dim), (..., h, L, S): query head i reads key/value head i // (h / h_kv)
        out = self._project(merge_heads(heads), "o", work, xp)  # (..., L, d_model)
        out = xp.astype(out, query.dtype)
        if return_weights:
            return out, xp.astype(weights, query.dtype)  # weights (..., h, L, S)
        return out

    @property
    def grouped(self) -> bool:
        """True when query heads share key/value heads (``num_kv_heads < num_heads``)."""
        return self.num_kv_heads != self.num_heads

    def _check_inputs(self, **inputs):
        for name, x in inputs.items():
            if x.shape[-1] != self.d_model:
                raise ValueError(
                    f"{name} must have d_model={self.d_model} features in its last axis; "
                    f"got {name} of shape {shape_of(x)}"
                )
            try:
                get_namespace(x, self.W_q)
            except TypeError:
                raise TypeError(
                    f"{name} is a {type(x).__module__.split('.')[0]} array but the weights are "
                    f"{type(self.W_q).__module__.split('.')[0]} arrays: build the layer with like={name}"
                ) from None

    def new_cache(self, *, window: int | None = None, sinks: int = 0) -> KVCache:
        """An empty ``KVCache`` for ``decode`` (``window``, ``sinks``: see ``KVCache``)."""
        return KVCache(window=window, sinks=sinks)

    def decode(self, x_new, cache: KVCache):
        """Causal self-attention for the next ``t`` positions, reading the earlier ones from ``cache``.

        x_new: (..., t, d_model), the inputs at positions ``cache.length .. cache.length + t - 1``.
        Their keys and values (``(..., num_kv_heads, t, head_dim)``) are appended to
        ``cache``; each new query attends to the cached keys and to the new keys at
        or before its own position (and, for a windowed cache, to those its window
        and the sinks keep). Returns out (..., t, d_model): decoding a sequence in
        chunks gives the rows of ``mha(x, is_causal=True)``.
        """
        if not isinstance(cache, KVCache):
            raise TypeError(f"cache must be an attn_course.KVCache (mha.new_cache()); got {type(cache).__name__}")
        x_new = as_float_array("x_new", x_new)
        require_ndim("x_new", x_new, 2, "(..., t, d_model)")
        self._check_inputs(x_new=x_new)
        held = cache.batch_shape
        if held is not None and (held[-1:], cache.feature_sizes) != ((self.num_kv_heads,), (self.head_dim,) * 2):
            raise ValueError(
                f"the cache holds keys (..., heads, n, d) with {held[-1]} heads of {cache.feature_sizes[0]} features "
                f"(leading axes {held}); this layer has num_kv_heads={self.num_kv_heads} of head_dim={self.head_dim}"
            )
        xp = get_namespace(x_new)
        work = compute_dtype(x_new.dtype, xp)
        x = xp.astype(x_new, work)
        t = shape_of(x)[-2]
        q = split_heads(self._project(x, "q", work, xp), self.num_heads)  # (..., h, t, head_dim)
        k = split_heads(self._project(x, "k", work, xp), self.num_kv_heads)  # (..., h_kv, t, head_dim)
        v = split_heads(self._project(x, "v", work, xp), self.num_kv_heads)  # (..., h_kv, t, head_dim)
        keys, values, positions = cache.append(k, v)  # (..., h_kv, n, head_dim) x 2, (n,)
        mask = None
        if t > 1 or cache.window is not None:  # one new query without a window sees every kept key
            query_positions = np.arange(cache.length - t, cache.length)  # (t,): the new positions
            allowed = cache.attention_mask(query_positions, positions)  # (t, n): causal, bottom-right aligned
            mask = xp.asarray(allowed, device=array_api_compat.device(x))
        heads = scaled_dot_product_attention(q, keys, values, mask, enable_gqa=self.grouped)  # (..., h, t, head_dim)
        out = self._project(merge_heads(heads), "o", work, xp)  # (..., t, d_model)
        return xp.astype(out, x_new.dtype)

    @classmethod
    def from_torch(cls, module, *, like=None):
        """A copy of a ``torch.nn.MultiheadAttention`` whose outputs agree with it.

        Supported: ``batch_first=True``, the same feature size for query, key and
        value (no ``kdim``/``vdim``), no ``add_bias_kv``, no ``add_zero_attn``;
        anything else raises ``ValueError``. ``in_proj_weight`` (3 d_model, d_model)
        and ``out_proj.weight`` are transposed into the ``(in, out)`` orientation.
        Dropout is not copied: the copy behaves like ``module.eval()``. Weights keep
        a float64 module's dtype, otherwise become float32.

        Beware the opposite mask conventions: torch's boolean ``attn_mask`` and
        ``key_padding_mask`` in ``nn.MultiheadAttention`` mean True = may NOT
        attend; here True = may attend. Torch also averages the returned weights
        over heads unless ``average_attn_weights=False``, and gives NaN for a
        query that may attend to nothing.
        """
        import torch  # torch is optional: imported only when a torch module is copied

        if not isinstance(module, torch.nn.MultiheadAttention):
            raise TypeError(f"module must be a torch.nn.MultiheadAttention; got {type(module).__name__}")
        unsupported = []
        if not module.batch_first:
            unsupported.append("batch_first=False (build it with batch_first=True)")
        if module.kdim != module.embed_dim or module.vdim != module.embed_dim:
            unsupported.append(f"kdim={module.kdim}, vdim={module.vdim} differing from embed_dim={module.embed_dim}")
        if module.bias_k is not None or module.bias_v is not None:
            unsupported.append("add_bias_kv=True")
        if module.add_zero_attn:
            unsupported.append("add_zero_attn=True")
        if unsupported:
            raise ValueError(f"MultiHeadAttention.from_torch does not support {'; '.join(unsupported)}")

        d_model, num_heads = cls._check_sizes(module.embed_dim, module.num_heads)
        dtype = np.float64 if module.in_proj_weight.dtype == torch.float64 else np.float32

        def as_numpy(tensor):
            return tensor.detach().to(device="cpu", dtype=torch.float64).numpy()

        in_weight = as_numpy(module.in_proj_weight)  # (3 d_model, d_model), (out, in): rows q, k, v
        weights = {name: in_weight[i * d_model : (i + 1) * d_model].T for i, name in enumerate("qkv")}
        weights["o"] = as_numpy(module.out_proj.weight).T  # (in, out)
        biases = None
        if module.in_proj_bias is not None:
            in_bias = as_numpy(module.in_proj_bias)  # (3 d_model,)
            biases = {name: in_bias[i * d_model : (i + 1) * d_model] for i, name in enumerate("qkv")}
            out_bias = module.out_proj.bias
            biases["o"] = np.zeros(d_model) if out_bias is None else as_numpy(out_bias)
        mha = cls.__new__(cls)
        mha._set_parameters(num_heads, weights, biases, dtype, like)
        return mha
