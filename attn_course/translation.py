"""An encoder-decoder transformer for translation, with cross-attention (lesson 16).

The encoder reads the whole source at once; the decoder writes the target one
token at a time and, at every layer, **cross-attends** to the encoder's output:

    CrossAttention(x, memory) = concat_i softmax(x W_q[:, i] (memory W_k[:, i])^T / sqrt(d_head)) memory W_v[:, i]  W_o

Queries come from the decoder's positions ``x (B, T, d_model)``, keys and values
from the encoder's output ``memory (B, S, d_model)``, so the weights are a
``(B, h, T, S)`` table: for each output position, how much it reads each input
position. A padding mask over the source keys (True = a real character) keeps
the queries off the padding.

Every layer is **pre-LN** (layer norm before each sub-layer, the residual sum
left alone), as in ``attn_course.torch_modules.TransformerBlock``:

* encoder layer: ``x + SelfAttn(LN(x), source padding)``, then ``x + MLP(LN(x))``
  (this *is* ``TransformerBlock``);
* decoder layer: ``y + SelfAttn(LN(y), causal AND target padding)``, then
  ``y + CrossAttn(LN(y), memory, source padding)``, then ``y + MLP(LN(y))``.

Each stack ends with a layer norm. All attention is the package's
``scaled_dot_product_attention`` called on torch tensors (the same lines as the
NumPy lessons), through ``torch_modules.MultiHeadAttention`` under its two role
names: ``MultiHeadSelfAttention`` (``attn(y, mask=...)``) and
``MultiHeadCrossAttention`` (``attn(y, memory, memory, mask=...)``, re-exported
here). Both MLPs are ``torch_modules.FeedForward``, and the masks are the
package's ``attn_course.masks`` patterns built on torch tensors.

``Translator.greedy_decode`` writes the target with a key/value cache per
decoder layer (``attn_course.KVCache``, lesson 19): each step runs the decoder
on the one new token, its self-attention reading the earlier tokens' keys and
values from the cache, instead of running it again over everything written so
far. The tokens are the same as with full passes.

``Translator(..., context="mean")`` removes cross-attention for comparison: the
decoder then gets one summary of the source, the mean of the encoder's outputs
over the real characters, added to every position (the fixed-vector bottleneck
of sequence-to-sequence models before attention).

torch is imported here: import this module only where torch is installed.
"""

from __future__ import annotations

import torch
from torch import nn

from . import masks
from .cache import KVCache
from .positions import sinusoidal_encoding
from .torch_modules import (
    FeedForward,
    MultiHeadCrossAttention,
    MultiHeadSelfAttention,
    TransformerBlock,
    check_head_sizes,
)
from .validation import check_int

__all__ = ["DecoderLayer", "MultiHeadCrossAttention", "Translator", "decoder_self_mask", "source_padding_mask"]


def _check_lengths(name: str, lengths, batch: int, n: int) -> torch.Tensor:
    if not isinstance(lengths, torch.Tensor) or lengths.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{name} must be an integer torch tensor (B,); got {type(lengths).__name__}")
    if lengths.shape != (batch,):
        raise ValueError(f"{name} must have shape ({batch},), one length per sequence; got {tuple(lengths.shape)}")
    if batch and (int(lengths.min()) < 1 or int(lengths.max()) > n):
        raise ValueError(f"{name} must lie in 1..{n}; got {lengths.tolist()}")
    return lengths


def _check_mask_arguments(lengths_name: str, lengths, size_name: str, size) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"{size_name} must be a positive integer; got {size!r}")
    if not isinstance(lengths, torch.Tensor) or lengths.dtype not in (torch.int32, torch.int64) or lengths.ndim != 1:
        raise TypeError(f"{lengths_name} must be a 1-d integer torch tensor (B,); got {lengths!r}")
    if lengths.numel() and (int(lengths.min()) < 0 or int(lengths.max()) > size):
        raise ValueError(f"{lengths_name} must lie in 0..{size_name}={size}; got {lengths.tolist()}")


def source_padding_mask(source_lengths: torch.Tensor, num_sources: int) -> torch.Tensor:
    """(B, 1, 1, S) boolean: True on the first ``source_lengths[b]`` keys, the real source characters.

    ``attn_course.masks.padding_mask`` on the lengths' torch device.
    """
    _check_mask_arguments("source_lengths", source_lengths, "num_sources", num_sources)
    return masks.padding_mask(source_lengths, num_sources, like=source_lengths)  # (B, 1, 1, S)


def decoder_self_mask(target_lengths: torch.Tensor, num_targets: int) -> torch.Tensor:
    """(B, 1, T, T) boolean: key ``j`` allowed to query ``i`` when ``j <= i`` (causal) AND ``j < target_lengths[b]``."""
    _check_mask_arguments("target_lengths", target_lengths, "num_targets", num_targets)
    earlier_and_real = masks.causal() & masks.padding(target_lengths)  # key j <= query i, and j a real target
    return masks.materialize(earlier_and_real, num_targets, like=target_lengths)  # (B, 1, T, T)


class DecoderLayer(nn.Module):
    """Pre-LN decoder layer: causal self-attention, then cross-attention to ``memory``, then the MLP.

    y: (B, T, d_model), memory: (B, S, d_model) -> (B, T, d_model), and the
    cross-attention weights (B, h, T, S). With ``cross_attention=False`` the
    middle sub-layer is left out (the decoder must get the source another way).
    """

    def __init__(self, d_model: int, num_heads: int, *, mlp_ratio: int = 4, cross_attention: bool = True):
        super().__init__()
        d_model, num_heads = check_head_sizes(d_model, num_heads)
        self.norm_self = nn.LayerNorm(d_model)
        self.self_attention = MultiHeadSelfAttention(d_model, num_heads)
        self.norm_cross = nn.LayerNorm(d_model) if cross_attention else None
        self.cross_attention = MultiHeadCrossAttention(d_model, num_heads) if cross_attention else None
        self.norm_mlp = nn.LayerNorm(d_model)
        self.mlp = FeedForward(d_model, mlp_ratio=mlp_ratio)

    def forward(self, y, memory, self_mask, source_mask):
        y = y + self.self_attention(self.norm_self(y), mask=self_mask)  # (B, T, d_model): reads earlier outputs
        weights = None
        if self.cross_attention is not None:
            queries = self.norm_cross(y)  # (B, T, d_model): from the decoder; keys and values from the encoder
            read, weights = self.cross_attention(queries, memory, memory, mask=source_mask, return_weights=True)
            y = y + read  # (B, T, d_model): reads the source
        y = y + self.mlp(self.norm_mlp(y))
        return y, weights

    def decode_step(self, y_new, memory, source_mask, cache: KVCache):
        """The layer for the next target positions ``y_new (B, t, d_model)``, self-attention read from ``cache``.

        Every target position is real while decoding, so the self-attention is
        causal only (``MultiHeadAttention.decode``). Returns ``(B, t, d_model)``
        and the cross-attention weights ``(B, h, t, S)`` (None without cross-attention).
        """
        y = y_new + self.self_attention.decode(self.norm_self(y_new), cache)  # (B, t, d_model)
        weights = None
        if self.cross_attention is not None:
            read, weights = self.cross_attention(self.norm_cross(y), memory, memory, mask=source_mask,
                                                 return_weights=True)  # fmt: skip
            y = y + read
        return y + self.mlp(self.norm_mlp(y)), weights


class Translator(nn.Module):
    """Encoder-decoder transformer over characters (pre-LN, sinusoidal positions).

    source (B, S) ids, source_lengths (B,), decoder_input (B, T) ids (``<bos>``
    then the target) -> logits (B, T, target_vocab_size): at each position, the
    scores of the next target character. ``context``: ``"attention"`` (the
    decoder cross-attends to the encoder) or ``"mean"`` (no cross-attention: the
    masked mean of the encoder's outputs is added to every decoder position).
    """

    CONTEXTS = ("attention", "mean")

    def __init__(self, source_vocab_size: int, target_vocab_size: int, *, d_model: int = 64, num_heads: int = 4,
                 num_encoder_layers: int = 2, num_decoder_layers: int = 2, max_length: int = 64,
                 context: str = "attention"):  # fmt: skip
        super().__init__()
        d_model, num_heads = check_head_sizes(d_model, num_heads)
        source_vocab_size = check_int("source_vocab_size", source_vocab_size, minimum=1)
        target_vocab_size = check_int("target_vocab_size", target_vocab_size, minimum=1)
        num_encoder_layers = check_int("num_encoder_layers", num_encoder_layers, minimum=1)
        num_decoder_layers = check_int("num_decoder_layers", num_decoder_layers, minimum=1)
        max_length = check_int("max_length", max_length, minimum=1)
        if context not in self.CONTEXTS:
            raise ValueError(f"context must be one of {self.CONTEXTS}; got {context!r}")
        self.context, self.max_length = context, max_length
        self.source_embedding = nn.Embedding(source_vocab_size, d_model)
        self.target_embedding = nn.Embedding(target_vocab_size, d_model)
        positions = torch.from_numpy(sinusoidal_encoding(max_length, d_model))  # (max_length, d_model)
        self.register_buffer("positions", positions, persistent=False)
        self.encoder = nn.ModuleList(TransformerBlock(d_model, num_heads) for _ in range(num_encoder_layers))
        self.encoder_norm = nn.LayerNorm(d_model)
        self.decoder = nn.ModuleList(
            DecoderLayer(d_model, num_heads, cross_attention=context == "attention") for _ in range(num_decoder_layers)
        )
        self.decoder_norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, target_vocab_size)

    def _check_ids(self, name: str, ids, vocab_size: int) -> torch.Tensor:
        if not isinstance(ids, torch.Tensor) or ids.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"{name} must be an integer torch tensor (B, length); got {type(ids).__name__}")
        if ids.ndim != 2 or not 1 <= ids.shape[1] <= self.max_length:
            raise ValueError(
                f"{name} must be (B, length) with 1 <= length <= {self.max_length}; got {tuple(ids.shape)}"
            )
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
            raise ValueError(f"{name} must hold ids in 0..{vocab_size - 1}")
        return ids

    def encode(self, source, source_lengths):
        """source (B, S), source_lengths (B,) -> memory (B, S, d_model) and the source mask (B, 1, 1, S)."""
        source = self._check_ids("source", source, self.source_embedding.num_embeddings)
        _check_lengths("source_lengths", source_lengths, source.shape[0], source.shape[1])
        source_mask = source_padding_mask(source_lengths, source.shape[1])  # (B, 1, 1, S)
        x = self.source_embedding(source) + self.positions[: source.shape[1]]  # (B, S, d_model)
        for block in self.encoder:
            x = block(x, source_mask)  # every source position reads every real source position
        return self.encoder_norm(x), source_mask

    def decode(self, memory, source_mask, decoder_input, target_lengths=None):
        """Decoder logits (B, T, target_vocab) and the cross-attention weights, one (B, h, T, S) per layer."""
        decoder_input = self._check_ids("decoder_input", decoder_input, self.target_embedding.num_embeddings)
        B, T = decoder_input.shape
        if target_lengths is None:
            target_lengths = torch.full((B,), T, dtype=torch.int64)
        _check_lengths("target_lengths", target_lengths, B, T)
        self_mask = decoder_self_mask(target_lengths, T)  # (B, 1, T, T)
        y = self.target_embedding(decoder_input) + self.positions[:T]  # (B, T, d_model)
        if self.context == "mean":
            real = source_mask[:, 0, 0, :, None].to(memory.dtype)  # (B, S, 1)
            summary = (memory * real).sum(dim=1, keepdim=True) / real.sum(dim=1, keepdim=True)  # (B, 1, d_model)
            y = y + summary
        cross_weights = []
        for layer in self.decoder:
            y, weights = layer(y, memory, self_mask, source_mask)
            cross_weights.append(weights)
        logits = self.head(self.decoder_norm(y))  # (B, T, target_vocab)
        return logits, cross_weights

    def forward(self, source, source_lengths, decoder_input, target_lengths=None, return_weights: bool = False):
        memory, source_mask = self.encode(source, source_lengths)
        logits, cross_weights = self.decode(memory, source_mask, decoder_input, target_lengths)
        return (logits, cross_weights) if return_weights else logits

    @torch.no_grad()
    def greedy_decode(self, source, source_lengths, *, max_new: int, bos: int = 1, eos: int = 2, pad: int = 0,
                      use_cache: bool = True):  # fmt: skip
        """Write the target one token at a time, always taking the most likely next token.

        Starts every sequence from ``<bos>``; a sequence that has produced
        ``<eos>`` gets ``pad`` afterwards. Stops after ``max_new`` tokens or when
        every sequence has ended. Returns the new tokens (B, n) (``<bos>`` not
        included, ``n <= max_new``) and the cross-attention weights, one (B, h, n, S)
        per layer (empty for ``context="mean"``), where row ``t`` is what the step
        that chose output token ``t`` read.

        With ``use_cache`` (the default) each step feeds only the newest token
        through the decoder; one ``KVCache`` per layer holds the self-attention's
        keys and values of the earlier tokens. ``use_cache=False`` runs the decoder
        over all tokens so far at every step (and the weights come from one last
        full pass); both choose the same tokens.
        """
        if isinstance(max_new, bool) or not isinstance(max_new, int) or not 1 <= max_new < self.max_length:
            raise ValueError(f"max_new must be an integer in 1..{self.max_length - 1}; got {max_new!r}")
        memory, source_mask = self.encode(source, source_lengths)
        B = source.shape[0]
        tokens = torch.full((B, 1), bos, dtype=torch.int64)  # (B, 1): <bos>
        finished = torch.zeros(B, dtype=torch.bool)
        caches = [KVCache() for _ in self.decoder]
        step_weights = []  # per step: one (B, h, 1, S) per layer
        for _ in range(max_new):
            if use_cache:
                last, weights = self.decode_step(memory, source_mask, tokens[:, -1:], caches)  # (B, vocab)
                step_weights.append(weights)
            else:
                logits, _ = self.decode(memory, source_mask, tokens)  # (B, t, vocab)
                last = logits[:, -1]
            next_token = last.argmax(dim=-1)  # (B,): the most likely next token
            next_token = torch.where(finished, torch.full_like(next_token, pad), next_token)
            tokens = torch.cat([tokens, next_token[:, None]], dim=1)  # (B, t + 1)
            finished |= next_token == eos
            if bool(finished.all()):
                break
        if use_cache:  # row t of each layer's weights: the step that chose token t
            layers = zip(*step_weights, strict=True)
            cross_weights = [None if rows[0] is None else torch.cat(rows, dim=2) for rows in layers]
        else:
            _, cross_weights = self.decode(memory, source_mask, tokens[:, :-1])  # the pass that chose every token
        cross_weights = [w for w in cross_weights if w is not None]
        return tokens[:, 1:], cross_weights

    def decode_step(self, memory, source_mask, new_tokens, caches: list[KVCache]):
        """Logits (B, target_vocab) for the token after ``new_tokens (B, t)``, earlier tokens read from ``caches``.

        ``caches`` holds one ``KVCache`` per decoder layer (the self-attention's keys
        and values); the new tokens sit at positions ``caches[0].length ..``.
        Returns the last position's logits and the cross-attention weights of the
        new positions, one (B, h, t, S) per layer (None without cross-attention).
        """
        start, T = caches[0].length, new_tokens.shape[1]
        if start + T > self.max_length:
            raise ValueError(f"decoding past max_length={self.max_length}: {start} cached + {T} new positions")
        y = self.target_embedding(new_tokens) + self.positions[start : start + T]  # (B, t, d_model)
        if self.context == "mean":
            real = source_mask[:, 0, 0, :, None].to(memory.dtype)  # (B, S, 1)
            y = y + (memory * real).sum(dim=1, keepdim=True) / real.sum(dim=1, keepdim=True)
        cross_weights = []
        for layer, cache in zip(self.decoder, caches, strict=True):
            y, weights = layer.decode_step(y, memory, source_mask, cache)
            cross_weights.append(weights)
        return self.head(self.decoder_norm(y))[:, -1], cross_weights  # (B, target_vocab)
