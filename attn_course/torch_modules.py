"""Attention as trainable torch modules, for the lessons that learn (05, 07, 09, 16, 17).

The modules compute attention with the package's own
``scaled_dot_product_attention``, called on torch tensors: the function takes
its array library from its inputs, so the same lines of math that the NumPy
lessons use run here under torch's autograd. Only the weights are torch's
(``nn.Linear``, learned by gradient descent).

* ``SelfAttention``: one head, ``softmax(x W_q (x W_k)^T / sqrt(d_head)) x W_v``.
* ``MultiHeadAttention``: ``num_heads`` heads side by side, then ``W_o``; the
  trainable twin of ``attn_course.MultiHeadAttention``, called the same way,
  ``mha(query, key=None, value=None, mask=None, is_causal=False, return_weights=False)``.
  Key and value default to the query: self-attention. Cross-attention passes
  the encoder's output as key and value: ``mha(y, memory, memory, mask=...)``.
  ``to_numpy()`` gives the NumPy layer with the same weights.
* ``MultiHeadSelfAttention``, ``MultiHeadCrossAttention``: that same class under
  the two names of the transformer's diagram. They add no code (one
  ``forward``, so a fix reaches both); they exist so that a printed model says
  which role each layer plays, ``(self_attention): MultiHeadSelfAttention`` and
  ``(cross_attention): MultiHeadCrossAttention``, where aliases would print
  ``MultiHeadAttention`` twice.
* ``FeedForward``: the position-wise MLP, ``Linear -> GELU -> Linear``.
* ``TransformerBlock``: pre-LN, ``x + attn(LN(x))`` then ``x + FeedForward(LN(x))``
  (layer norm *before* each sub-layer, as GPT-2 and most modern models do; the
  2017 paper normalised after the residual sum, "post-LN").
* ``CharLanguageModel``: characters in, next-character logits out, with fixed
  sinusoidal positions and causal blocks. ``generate`` decodes with a key/value
  cache per block (``attn_course.KVCache``): each new character costs one row
  of attention per layer instead of a pass over the whole prefix.

Decoding with a cache (lesson 19): ``MultiHeadAttention.decode(x_new, cache)``,
``TransformerBlock.decode`` and ``CharLanguageModel.decode(ids_new, caches)``
compute the next positions from their own inputs and the cached keys and values
of the earlier ones, the same numbers as the full causal pass.

torch is imported here, so import this module only where torch is installed
(``import attn_course`` itself never imports it).
"""

from __future__ import annotations

import torch
from torch import nn

from . import multihead
from .attention import scaled_dot_product_attention
from .cache import KVCache
from .multihead import merge_heads, split_heads
from .positions import sinusoidal_encoding
from .validation import check_int

__all__ = [
    "CharLanguageModel",
    "FeedForward",
    "MultiHeadAttention",
    "MultiHeadCrossAttention",
    "MultiHeadSelfAttention",
    "SelfAttention",
    "TransformerBlock",
    "check_head_sizes",
]


def check_head_sizes(d_model: int, num_heads: int) -> tuple[int, int]:
    """``(d_model, num_heads)`` as positive integers with ``num_heads`` dividing ``d_model``, else an error."""
    d_model = check_int("d_model", d_model, minimum=1)
    num_heads = check_int("num_heads", num_heads, minimum=1)
    if d_model % num_heads:
        raise ValueError(
            f"d_model must be divisible by num_heads (each head gets d_model // num_heads features); "
            f"got d_model={d_model}, num_heads={num_heads}"
        )
    return d_model, num_heads


class SelfAttention(nn.Module):
    """One head of self-attention with learned projections.

    x: (..., L, d_model) -> out (..., L, d_head); with ``return_weights`` also
    the weights (..., L, L). ``mask`` is boolean, True = may attend.
    """

    def __init__(self, d_model: int, d_head: int | None = None, *, bias: bool = False):
        super().__init__()
        d_model = check_int("d_model", d_model, minimum=1)
        d_head = d_model if d_head is None else check_int("d_head", d_head, minimum=1)
        self.d_model, self.d_head = d_model, d_head
        self.query = nn.Linear(d_model, d_head, bias=bias)  # x @ W_q, W_q = query.weight.T: (d_model, d_head)
        self.key = nn.Linear(d_model, d_head, bias=bias)
        self.value = nn.Linear(d_model, d_head, bias=bias)

    def forward(self, x, mask=None, is_causal: bool = False, return_weights: bool = False):
        q, k, v = self.query(x), self.key(x), self.value(x)  # (..., L, d_head) each
        return scaled_dot_product_attention(q, k, v, mask, is_causal=is_causal, return_weights=return_weights)


class MultiHeadAttention(nn.Module):
    """``num_heads`` heads of attention on ``d_model / num_heads`` features each, then ``W_o``.

    Called like ``attn_course.MultiHeadAttention``: ``mha(query)`` is
    self-attention, ``mha(y, memory, memory)`` cross-attention. Parameters, in
    this order: ``query``, ``key``, ``value``, ``out``, each an
    ``nn.Linear(d_model, d_model)`` (``key`` and ``value`` map to
    ``num_kv_heads * head_dim`` features when ``num_kv_heads < num_heads``:
    grouped-query attention). ``decode(x_new, cache)`` continues causal
    self-attention from a ``KVCache``.
    """

    def __init__(self, d_model: int, num_heads: int, *, num_kv_heads: int | None = None, bias: bool = True):
        super().__init__()
        d_model, num_heads = check_head_sizes(d_model, num_heads)
        num_kv_heads = num_heads if num_kv_heads is None else check_int("num_kv_heads", num_kv_heads, minimum=1)
        if num_heads % num_kv_heads:
            raise ValueError(
                f"num_kv_heads must divide num_heads; got num_heads={num_heads}, num_kv_heads={num_kv_heads}"
            )
        self.d_model, self.num_heads, self.num_kv_heads = d_model, num_heads, num_kv_heads
        kv_width = num_kv_heads * (d_model // num_heads)
        self.query = nn.Linear(d_model, d_model, bias=bias)
        self.key = nn.Linear(d_model, kv_width, bias=bias)
        self.value = nn.Linear(d_model, kv_width, bias=bias)
        self.out = nn.Linear(d_model, d_model, bias=bias)

    def forward(self, query, key=None, value=None, mask=None, is_causal: bool = False, return_weights: bool = False):
        """Attend from ``query`` to ``key``/``value`` with every head.

        query: (..., L, d_model); key: (..., S, d_model), default ``query``
        (self-attention); value: (..., S, d_model), default ``key``.
        mask: boolean, True = may attend, as for ``attn_course.MultiHeadAttention``:
            ``(L, S)``: the same for every sequence and head;
            ``(..., L, S)`` with as many axes as ``query``: one per sequence;
            ``(..., h or 1, L, S)`` with one more axis: one per head, e.g. a padding mask ``(B, 1, 1, S)``.
        is_causal: also forbid keys ``j > i``.
        Returns out (..., L, d_model), and the per-head weights (..., h, L, S) too if ``return_weights``.
        """
        key = query if key is None else key
        value = key if value is None else value
        for name, tensor in (("query", query), ("key", key), ("value", value)):
            self._check_input(name, tensor)
        if mask is not None and getattr(mask, "ndim", 0) == query.ndim > 2:
            mask = mask[..., None, :, :]  # (..., 1, L, S): the sequence's mask, the same for every head
        q = split_heads(self.query(query), self.num_heads)  # (..., h, L, d_head): what each position asks
        k = split_heads(self.key(key), self.num_kv_heads)  # (..., h_kv, S, d_head): what each key position offers
        v = split_heads(self.value(value), self.num_kv_heads)  # (..., h_kv, S, d_head)
        heads, weights = self.attend(q, k, v, mask, is_causal)  # (..., h, L, d_head), (..., h, L, S)
        out = self.out(merge_heads(heads))  # (..., L, d_model)
        return (out, weights) if return_weights else out

    def attend(self, q, k, v, mask, is_causal: bool):
        """The heads' attention: ``(heads (..., h, L, d_head), weights (..., h, L, S))``; subclasses may swap it."""
        return scaled_dot_product_attention(
            q, k, v, mask, is_causal=is_causal, return_weights=True, enable_gqa=self.num_kv_heads != self.num_heads
        )

    def decode(self, x_new, cache: KVCache):
        """Causal self-attention for the next ``t`` positions ``x_new (..., t, d_model)``, earlier ones from ``cache``.

        The new keys and values ``(..., h_kv, t, d_head)`` are appended to ``cache``;
        query ``i`` of the new ones (position ``cache.length - t + i`` after the
        append) sees every cached key and the new keys up to itself (bottom-right
        causal). Returns out (..., t, d_model), the rows the full causal pass gives.
        """
        if not isinstance(cache, KVCache):
            raise TypeError(f"cache must be an attn_course.KVCache; got {type(cache).__name__}")
        self._check_input("x_new", x_new)
        held = cache.batch_shape
        d_head = self.d_model // self.num_heads
        if held is not None and (held[-1], cache.feature_sizes) != (self.num_kv_heads, (d_head, d_head)):
            raise ValueError(
                f"the cache holds {held[-1]} heads of {cache.feature_sizes[0]} features (leading axes {held}); "
                f"this layer has num_kv_heads={self.num_kv_heads} of d_head={d_head}"
            )
        t = x_new.shape[-2]
        q = split_heads(self.query(x_new), self.num_heads)  # (..., h, t, d_head)
        k = split_heads(self.key(x_new), self.num_kv_heads)  # (..., h_kv, t, d_head)
        v = split_heads(self.value(x_new), self.num_kv_heads)  # (..., h_kv, t, d_head)
        keys, values, positions = cache.append(k, v)  # (..., h_kv, n, d_head) x 2, (n,)
        mask = None
        if t > 1 or cache.window is not None:  # a single new query without a window sees every key
            query_positions = range(cache.length - t, cache.length)
            mask = torch.from_numpy(cache.attention_mask(query_positions, positions)).to(x_new.device)  # (t, n)
        heads = scaled_dot_product_attention(q, keys, values, mask, enable_gqa=self.num_kv_heads != self.num_heads)
        return self.out(merge_heads(heads))  # (..., t, d_model)

    def _check_input(self, name: str, tensor) -> None:
        if not isinstance(tensor, torch.Tensor) or not torch.is_floating_point(tensor):
            what = f"dtype {tensor.dtype}" if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise TypeError(
                f"{name} must be a float torch tensor (..., n, d_model={self.d_model}); got {what} "
                "(a boolean mask goes in mask=...)"
            )
        if tensor.ndim < 2 or tensor.shape[-1] != self.d_model:
            raise ValueError(
                f"{name} must have shape (..., n, d_model) with d_model={self.d_model}; got {tuple(tensor.shape)}"
            )

    def to_numpy(self) -> multihead.MultiHeadAttention:
        """The NumPy ``attn_course.MultiHeadAttention`` with this module's weights (float32)."""
        numpy_layer = multihead.MultiHeadAttention(
            self.d_model, self.num_heads, num_kv_heads=self.num_kv_heads, bias=self.query.bias is not None
        )
        for name, linear in (("q", self.query), ("k", self.key), ("v", self.value), ("o", self.out)):
            setattr(numpy_layer, f"W_{name}", linear.weight.detach().T.float().cpu().numpy().copy())  # (in, out)
            if linear.bias is not None:
                setattr(numpy_layer, f"b_{name}", linear.bias.detach().float().cpu().numpy().copy())
        return numpy_layer


class MultiHeadSelfAttention(MultiHeadAttention):
    """``MultiHeadAttention`` in the role of self-attention, called ``mha(x, mask=..., is_causal=...)``.

    x: (..., L, d_model) -> out (..., L, d_model), weights (..., h, L, L).
    """


class MultiHeadCrossAttention(MultiHeadAttention):
    """``MultiHeadAttention`` in the role of cross-attention, called ``mha(y, memory, memory, mask=...)``.

    Queries from the decoder's ``y (..., T, d_model)``, keys and values from the
    encoder's ``memory (..., S, d_model)``: out (..., T, d_model), weights (..., h, T, S).
    """


class FeedForward(nn.Sequential):
    """The position-wise MLP of a transformer layer: ``Linear(d_model, mlp_ratio * d_model) -> GELU -> Linear(back)``.

    Each position is transformed on its own (mixing positions is attention's
    job). x: (..., L, d_model) -> (..., L, d_model). A ``Sequential``, so
    ``feed_forward[0]`` is the first ``Linear``.
    """

    def __init__(self, d_model: int, *, mlp_ratio: int = 4):
        d_model = check_int("d_model", d_model, minimum=1)
        hidden = check_int("mlp_ratio", mlp_ratio, minimum=1) * d_model
        super().__init__(nn.Linear(d_model, hidden), nn.GELU(), nn.Linear(hidden, d_model))


class TransformerBlock(nn.Module):
    """Pre-LN transformer block: ``x = x + attn(LN1(x))``, then ``x = x + mlp(LN2(x))``.

    ``attention`` is a ``MultiHeadSelfAttention``, ``mlp`` a ``FeedForward``.
    x: (..., L, d_model) -> (..., L, d_model).
    """

    def __init__(self, d_model: int, num_heads: int, *, mlp_ratio: int = 4, dropout: float = 0.0):
        super().__init__()
        d_model, num_heads = check_head_sizes(d_model, num_heads)
        self.norm1 = nn.LayerNorm(d_model)
        self.attention = MultiHeadSelfAttention(d_model, num_heads)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = FeedForward(d_model, mlp_ratio=mlp_ratio)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, mask=None, is_causal: bool = False, return_weights: bool = False):
        attended, weights = self.attention(self.norm1(x), mask=mask, is_causal=is_causal, return_weights=True)
        x = x + self.dropout(attended)
        x = x + self.dropout(self.mlp(self.norm2(x)))
        return (x, weights) if return_weights else x

    def decode(self, x_new, cache: KVCache):
        """The block for the next positions ``x_new (..., t, d_model)``, causal attention read from ``cache``."""
        x = x_new + self.dropout(self.attention.decode(self.norm1(x_new), cache))
        return x + self.dropout(self.mlp(self.norm2(x)))


class CharLanguageModel(nn.Module):
    """A tiny decoder-only transformer over characters: predicts each next character.

    token ids (B, L) -> logits (B, L, vocab_size), ``L <= context_length``.
    Positions are the fixed sinusoidal encoding (``attn_course.sinusoidal_encoding``)
    added to learned character embeddings; every block is causal.
    """

    def __init__(self, vocab_size: int, *, d_model: int = 64, num_heads: int = 4, num_layers: int = 2,
                 context_length: int = 64, dropout: float = 0.0):  # fmt: skip
        super().__init__()
        d_model, num_heads = check_head_sizes(d_model, num_heads)
        vocab_size = check_int("vocab_size", vocab_size, minimum=1)
        num_layers = check_int("num_layers", num_layers, minimum=1)
        self.context_length = check_int("context_length", context_length, minimum=1)
        self.embedding = nn.Embedding(vocab_size, d_model)
        positions = torch.from_numpy(sinusoidal_encoding(context_length, d_model))  # (context_length, d_model)
        self.register_buffer("positions", positions, persistent=False)
        self.blocks = nn.ModuleList(TransformerBlock(d_model, num_heads, dropout=dropout) for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)

    def forward(self, ids, return_weights: bool = False):
        if ids.ndim != 2 or ids.shape[1] > self.context_length:
            raise ValueError(f"ids must be (B, L) with L <= {self.context_length}; got shape {tuple(ids.shape)}")
        x = self.embedding(ids) + self.positions[: ids.shape[1]]  # (B, L, d_model)
        all_weights = []
        for block in self.blocks:
            x, weights = block(x, is_causal=True, return_weights=True)
            all_weights.append(weights)  # (B, h, L, L) per layer
        logits = self.head(self.norm(x))  # (B, L, vocab_size)
        return (logits, all_weights) if return_weights else logits

    def new_caches(self) -> list[KVCache]:
        """One empty ``KVCache`` per block, for ``decode``."""
        return [KVCache() for _ in self.blocks]

    def decode(self, ids_new, caches: list[KVCache]):
        """Logits (B, t, vocab_size) for the next ``t`` characters ``ids_new (B, t)``, earlier ones in ``caches``.

        The new characters sit at positions ``caches[0].length ..``; every block
        appends their keys and values to its cache. The total length must stay
        within ``context_length`` (the sinusoidal table ends there).
        """
        if len(caches) != len(self.blocks):
            raise ValueError(f"caches must hold one KVCache per block ({len(self.blocks)}); got {len(caches)}")
        start = caches[0].length
        if ids_new.ndim != 2 or start + ids_new.shape[1] > self.context_length:
            raise ValueError(
                f"ids_new must be (B, t) with {start} cached + t <= context_length={self.context_length}; "
                f"got shape {tuple(ids_new.shape)}"
            )
        x = self.embedding(ids_new) + self.positions[start : start + ids_new.shape[1]]  # (B, t, d_model)
        for block, cache in zip(self.blocks, caches, strict=True):
            x = block.decode(x, cache)
        return self.head(self.norm(x))  # (B, t, vocab_size)

    @torch.no_grad()
    def generate(self, ids, num_new: int, *, temperature: float = 1.0, generator: torch.Generator | None = None,
                 use_cache: bool = True):  # fmt: skip
        """Extend ``ids`` (B, L) by ``num_new`` sampled characters; a ``generator`` makes it repeatable.

        Each step samples from the logits of the last (at most) ``context_length``
        characters. With ``use_cache`` (the default) the prompt is encoded once and
        each new character is one ``decode`` step: its keys and values join one
        ``KVCache`` per block. Once the text outgrows the context, the window of
        characters slides and every position's sinusoidal encoding changes, so the
        cached keys no longer apply: from then on each step is a full pass over the
        last ``context_length`` characters, as without the cache. The characters
        drawn are the same either way.
        """
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0; got {temperature}")
        caches = None
        for _ in range(num_new):
            if use_cache and ids.shape[1] <= self.context_length:
                if caches is None:  # the prompt (at most context_length characters) in one pass
                    caches = self.new_caches()
                    logits = self.decode(ids, caches)[:, -1]  # (B, vocab_size)
                else:  # one new character: one row of attention per block
                    logits = self.decode(ids[:, -1:], caches)[:, -1]
            else:
                logits = self(ids[:, -self.context_length :])[:, -1]  # (B, vocab_size): the whole window again
            probabilities = torch.softmax(logits / temperature, dim=-1)
            ids = torch.cat([ids, torch.multinomial(probabilities, 1, generator=generator)], dim=1)
        return ids
