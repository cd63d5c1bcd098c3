"""Attention as trainable torch modules, for the lessons that learn (05, 07, 09).

The modules compute attention with the package's own
``scaled_dot_product_attention``, called on torch tensors: the function takes
its array library from its inputs, so the same lines of math that the NumPy
lessons use run here under torch's autograd. Only the weights are torch's
(``nn.Linear``, learned by gradient descent).

* ``SelfAttention``: one head, ``softmax(x W_q (x W_k)^T / sqrt(d_head)) x W_v``.
* ``MultiHeadSelfAttention``: ``num_heads`` heads side by side, then ``W_o``.
* ``TransformerBlock``: pre-LN, ``x + attn(LN(x))`` then ``x + MLP(LN(x))``
  (layer norm *before* each sub-layer, as GPT-2 and most modern models do; the
  2017 paper normalised after the residual sum, "post-LN").
* ``CharLanguageModel``: characters in, next-character logits out, with fixed
  sinusoidal positions and causal blocks.

torch is imported here, so import this module only where torch is installed
(``import attn_course`` itself never imports it).
"""

from __future__ import annotations

import torch
from torch import nn

from .attention import scaled_dot_product_attention
from .multihead import MultiHeadAttention, merge_heads, split_heads
from .positions import sinusoidal_encoding

__all__ = ["CharLanguageModel", "MultiHeadSelfAttention", "SelfAttention", "TransformerBlock"]


def _check_sizes(d_model: int, num_heads: int):
    for name, value in (("d_model", d_model), ("num_heads", num_heads)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer; got {value!r}")
    if d_model % num_heads:
        raise ValueError(f"d_model must be divisible by num_heads; got d_model={d_model}, num_heads={num_heads}")


class SelfAttention(nn.Module):
    """One head of self-attention with learned projections.

    x: (..., L, d_model) -> out (..., L, d_head); with ``return_weights`` also
    the weights (..., L, L). ``mask`` is boolean, True = may attend.
    """

    def __init__(self, d_model: int, d_head: int | None = None, *, bias: bool = False):
        super().__init__()
        d_head = d_model if d_head is None else d_head
        _check_sizes(d_model, 1)
        _check_sizes(d_head, 1)
        self.d_model, self.d_head = d_model, d_head
        self.query = nn.Linear(d_model, d_head, bias=bias)  # x @ W_q, W_q = query.weight.T: (d_model, d_head)
        self.key = nn.Linear(d_model, d_head, bias=bias)
        self.value = nn.Linear(d_model, d_head, bias=bias)

    def forward(self, x, mask=None, is_causal: bool = False, return_weights: bool = False):
        q, k, v = self.query(x), self.key(x), self.value(x)  # (..., L, d_head) each
        return scaled_dot_product_attention(q, k, v, mask, is_causal=is_causal, return_weights=return_weights)


class MultiHeadSelfAttention(nn.Module):
    """``num_heads`` heads of self-attention on ``d_model / num_heads`` features each, then ``W_o``.

    x: (..., L, d_model) -> out (..., L, d_model); with ``return_weights`` also
    the per-head weights (..., num_heads, L, L). ``mask`` is boolean, True = may
    attend, broadcastable to (..., num_heads, L, L).
    """

    def __init__(self, d_model: int, num_heads: int, *, bias: bool = True):
        super().__init__()
        _check_sizes(d_model, num_heads)
        self.d_model, self.num_heads = d_model, num_heads
        self.query = nn.Linear(d_model, d_model, bias=bias)
        self.key = nn.Linear(d_model, d_model, bias=bias)
        self.value = nn.Linear(d_model, d_model, bias=bias)
        self.out = nn.Linear(d_model, d_model, bias=bias)

    def forward(self, x, mask=None, is_causal: bool = False, return_weights: bool = False):
        q = split_heads(self.query(x), self.num_heads)  # (..., h, L, d_head)
        k = split_heads(self.key(x), self.num_heads)
        v = split_heads(self.value(x), self.num_heads)
        heads, weights = scaled_dot_product_attention(q, k, v, mask, is_causal=is_causal, return_weights=True)
        out = self.out(merge_heads(heads))  # (..., L, d_model)
        return (out, weights) if return_weights else out

    def to_numpy(self) -> MultiHeadAttention:
        """The NumPy ``attn_course.MultiHeadAttention`` with this module's weights (float32)."""
        numpy_layer = MultiHeadAttention(self.d_model, self.num_heads, bias=self.query.bias is not None)
        for name, linear in (("q", self.query), ("k", self.key), ("v", self.value), ("o", self.out)):
            setattr(numpy_layer, f"W_{name}", linear.weight.detach().T.float().numpy().copy())  # (in, out)
            if linear.bias is not None:
                setattr(numpy_layer, f"b_{name}", linear.bias.detach().float().numpy().copy())
        return numpy_layer


class TransformerBlock(nn.Module):
    """Pre-LN transformer block: ``x = x + attn(LN1(x))``, then ``x = x + MLP(LN2(x))``.

    The MLP is ``Linear(d_model, mlp_ratio * d_model) -> GELU -> Linear(back)``.
    x: (..., L, d_model) -> (..., L, d_model).
    """

    def __init__(self, d_model: int, num_heads: int, *, mlp_ratio: int = 4, dropout: float = 0.0):
        super().__init__()
        _check_sizes(d_model, num_heads)
        self.norm1 = nn.LayerNorm(d_model)
        self.attention = MultiHeadSelfAttention(d_model, num_heads)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, mlp_ratio * d_model), nn.GELU(), nn.Linear(mlp_ratio * d_model, d_model)
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, mask=None, is_causal: bool = False, return_weights: bool = False):
        attended, weights = self.attention(self.norm1(x), mask, is_causal=is_causal, return_weights=True)
        x = x + self.dropout(attended)
        x = x + self.dropout(self.mlp(self.norm2(x)))
        return (x, weights) if return_weights else x


class CharLanguageModel(nn.Module):
    """A tiny decoder-only transformer over characters: predicts each next character.

    token ids (B, L) -> logits (B, L, vocab_size), ``L <= context_length``.
    Positions are the fixed sinusoidal encoding (``attn_course.sinusoidal_encoding``)
    added to learned character embeddings; every block is causal.
    """

    def __init__(self, vocab_size: int, *, d_model: int = 64, num_heads: int = 4, num_layers: int = 2,
                 context_length: int = 64, dropout: float = 0.0):  # fmt: skip
        super().__init__()
        _check_sizes(d_model, num_heads)
        for name, value in (("vocab_size", vocab_size), ("num_layers", num_layers), ("context_length", context_length)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer; got {value!r}")
        self.context_length = context_length
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

    @torch.no_grad()
    def generate(self, ids, num_new: int, *, temperature: float = 1.0, generator: torch.Generator | None = None):
        """Extend ``ids`` (B, L) by ``num_new`` sampled characters; a ``generator`` makes it repeatable."""
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0; got {temperature}")
        for _ in range(num_new):
            logits = self(ids[:, -self.context_length :])[:, -1] / temperature  # (B, vocab_size)
            probabilities = torch.softmax(logits, dim=-1)
            ids = torch.cat([ids, torch.multinomial(probabilities, 1, generator=generator)], dim=1)
        return ids
