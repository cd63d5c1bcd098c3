"""Exercises of lesson 16, translation: ``solutions/16_application_translation.ipynb``.

* ``decoder_masks(target_lengths, source_lengths, num_targets, num_sources)``:
  the decoder's two boolean masks, ``(self_mask, cross_mask)``: self-attention
  ``(B, 1, T, T)``, True where key ``j <= i`` AND ``j < target_lengths[b]``;
  cross-attention ``(B, 1, T, S)``, True where source key ``j < source_lengths[b]``
  (every output position may read the whole real source);
* ``multi_head_cross_attention(y, memory, W_q, W_k, W_v, W_o, num_heads, cross_mask)``:
  multi-head attention without biases, queries from the decoder ``y (B, T, d_model)``,
  keys and values from the encoder's ``memory (B, S, d_model)``; returns
  ``(output (B, T, d_model), weights (B, h, T, S))``;
* ``greedy_decode(step_scores, bos, eos, pad)``: greedy decoding of a toy decoder
  whose next-token scores at step ``t`` after token ``c`` are
  ``step_scores[b, t, c]`` (``(B, max_new, V, V)``): start from ``bos``, append the
  argmax, write ``pad`` after a sequence's ``eos``, stop when every sequence has
  ended or after ``max_new`` tokens; the new tokens ``(B, n)`` int64, without ``bos``;
* ``attention_weight_shapes(B, T, S, num_heads)`` (predict, then verify): the
  shapes of the weights of the model's three attentions, one row each, as an
  int64 ``(3, 4)`` array: encoder self-attention ``(B, h, S, S)``, decoder
  self-attention ``(B, h, T, T)``, cross-attention ``(B, h, T, S)``.

References: ``attn_course.masks`` (``causal_mask``, ``padding_mask``) and
``attn_course.MultiHeadAttention`` (bias-free, holding the given weights,
called with ``key = value = memory``); greedy decoding is the loop written
below (the package's torch ``Translator.greedy_decode`` runs the same loop on a
real decoder). Sizes differ (``T=5, S=7, d_model=12, h=3``, ...), so swapping
the decoder's and the encoder's roles changes a shape and the check says so.
"""

from __future__ import annotations

import math

import numpy as np

from ... import masks
from ...multihead import merge_heads as reference_merge
from ...multihead import split_heads as reference_split
from ...softmax import softmax as reference_softmax
from ..judge import Case, Exercise, Mistake, rows_sum_to_one, within_zero_and_one, zero_where_masked
from .inputs import normal_array
from .multihead import WRONG_ORDER_MERGE, bias_free_layer, merge_heads_no_transpose
from .secret_inputs import decoder_masks_case, weight_shapes_case

__all__ = ["EXERCISES"]

LESSON = "16_application_translation"
PAD, BOS, EOS = 0, 1, 2


# --------------------------------------------------------------------------- the decoder's masks


def _masks(target_lengths, source_lengths, num_targets, num_sources, *, causal_diagonal=True, self_padding="keys",
           self_causal=True, cross_causal=False, cross_lengths="source"):  # fmt: skip
    """``(self_mask (B, 1, T, T), cross_mask (B, 1, T, S))``, with the classic mistakes as switches."""
    B, T, S = len(target_lengths), num_targets, num_sources
    causal = masks.causal_mask(T) if causal_diagonal else np.tril(np.ones((T, T), dtype=bool), k=-1)  # (T, T)
    if not self_causal:
        causal = np.ones((T, T), dtype=bool)
    real_targets = masks.padding_mask(target_lengths, T)  # (B, 1, 1, T): real target keys
    if self_padding == "queries":
        real_targets = np.swapaxes(real_targets, -1, -2)  # (B, 1, T, 1): real target queries
    self_mask = causal & real_targets if self_padding else np.broadcast_to(causal, (B, 1, T, T))
    lengths = source_lengths if cross_lengths == "source" else target_lengths
    cross_mask = np.broadcast_to(masks.padding_mask(lengths, S), (B, 1, T, S))  # (B, 1, T, S)
    if cross_causal:
        cross_mask = cross_mask & (np.arange(S)[None, :] <= np.arange(T)[:, None])
    return np.ascontiguousarray(self_mask), np.ascontiguousarray(cross_mask)


def _masks_case(target_lengths, source_lengths, num_targets, num_sources):
    return lambda rng: (
        np.asarray(target_lengths, dtype=np.int64),
        np.asarray(source_lengths, dtype=np.int64),
        num_targets,
        num_sources,
    )


MASKS = Exercise(
    name="decoder_masks",
    function="decoder_masks",
    params=("target_lengths", "source_lengths", "num_targets", "num_sources"),
    lesson=LESSON,
    reference=_masks,
    outputs=("self_mask", "cross_mask"),
    cases=(
        Case(
            "lesson_batch",
            "target_lengths: int64 [5, 3, 1], source_lengths: [7, 4, 2], num_targets = 5, num_sources = 7",
            _masks_case([5, 3, 1], [7, 4, 2], 5, 7),
            seed=1601,
            secret=decoder_masks_case((2, 4), (4, 6), (7, 9)),
            points=2.0,
        ),
        Case(
            "long_source",
            "target_lengths: int64 [2, 6], source_lengths: [9, 3], num_targets = 6, num_sources = 9",
            _masks_case([2, 6], [9, 3], 6, 9),
            seed=1602,
            secret=decoder_masks_case((2, 2), (5, 7), (8, 10)),
        ),
        Case(
            "short_source",
            "target_lengths: int64 [6, 6, 2, 5], source_lengths: [4, 1, 3, 2], num_targets = 6, num_sources = 4",
            _masks_case([6, 6, 2, 5], [4, 1, 3, 2], 6, 4),
            seed=1603,
            secret=decoder_masks_case((3, 5), (6, 8), (3, 5)),
        ),
    ),
    # edge cases a learner never sees (the grader runs them after the public case of the same name passed)
    hidden={
        "lesson_batch": (
            Case(
                "first_step",
                "target_lengths: int64 [1, 1, 1], source_lengths: [3, 5, 1], num_targets = 1, num_sources = 5: the "
                "first decoding step, one target position",
                _masks_case([1, 1, 1], [3, 5, 1], 1, 5),
                seed=3071,
            ),
            Case(
                "one_sentence",
                "target_lengths: int64 [3], source_lengths: [5], num_targets = 4, num_sources = 6: a batch of one",
                _masks_case([3], [5], 4, 6),
                seed=3072,
            ),
        ),
    },
    mistakes=(
        Mistake(
            "target padding left out",
            "The decoder's self-attention mask is causal AND target padding: query i may read key j only if "
            "j <= i and j < target_lengths[b]. Combine the (T, T) causal mask with a (B, 1, 1, T) padding mask.",
            lambda t, s, T, S: _masks(t, s, T, S, self_padding=None),
        ),
        Mistake(
            "causal rule left out",
            "The decoder must not read the characters it is about to predict: AND the padding mask with the "
            "causal mask j <= i (np.tril), not only with the padding.",
            lambda t, s, T, S: _masks(t, s, T, S, self_causal=False),
        ),
        Mistake(
            "padding applied to the queries",
            "Padding removes keys (columns, the last axis): put the lengths on the key axis, shape (B, 1, 1, T), "
            "so that it broadcasts over the query rows.",
            lambda t, s, T, S: _masks(t, s, T, S, self_padding="queries"),
        ),
        Mistake(
            "diagonal excluded",
            "Each output position may read itself (its own input character): keep the diagonal, j <= i.",
            lambda t, s, T, S: _masks(t, s, T, S, causal_diagonal=False),
        ),
        Mistake(
            "causal cross-attention",
            "Cross-attention is not causal: the whole source is known before decoding starts, so every output "
            "position may read every real source character. Its only rule is the source padding.",
            lambda t, s, T, S: _masks(t, s, T, S, cross_causal=True),
        ),
        Mistake(
            "cross mask from the target lengths",
            "The cross-attention keys are the source's characters: build its mask from source_lengths.",
            lambda t, s, T, S: _masks(t, s, T, S, cross_lengths="target"),
        ),
    ),
    hints={
        "type": "Return both masks as a tuple of boolean arrays: return self_mask, cross_mask.",
        "dtype": "Masks hold booleans: build them from comparisons (j <= i, j < length), not from np.ones.",
        "shape": "self_mask is (B, 1, T, T) and cross_mask (B, 1, T, S), with B = len(target_lengths): "
        "broadcast the (T, T) or (1, S) rule against the (B, 1, 1, ...) padding, e.g. with np.broadcast_to.",
        "values": "Rows are queries (output positions), columns keys. self: j <= i and j < target_lengths[b]; "
        "cross: j < source_lengths[b] for every row.",
    },
)


# --------------------------------------------------------------------------- cross-attention


def _reference_cross(y, memory, W_q, W_k, W_v, W_o, num_heads, cross_mask):
    layer = bias_free_layer(W_q, W_k, W_v, W_o, num_heads)
    return layer(y, memory, memory, mask=cross_mask, return_weights=True)  # queries from y, keys and values from memory


def _cross_case(B, T, S, d_model, num_heads, lengths, dtype=np.float32):
    def make(rng):
        y = normal_array(rng, (B, T, d_model), dtype)
        memory = normal_array(rng, (B, S, d_model), dtype)
        scale = 1.0 / math.sqrt(d_model)
        W_q, W_k, W_v, W_o = ((normal_array(rng, (d_model, d_model), np.float64) * scale).astype(dtype) for _ in "qkvo")
        cross_mask = np.broadcast_to(masks.padding_mask(lengths, S), (B, 1, T, S)).copy()  # (B, 1, T, S)
        return y, memory, W_q, W_k, W_v, W_o, num_heads, cross_mask

    return make


def _cross_variant(use_mask=True, causal=False, merge=reference_merge, scale="head_dim", output_matrix=True):
    """A wrong cross-attention with one classic mistake switched on: ``(output, weights)``."""

    def attention(y, memory, W_q, W_k, W_v, W_o, num_heads, cross_mask):
        q = reference_split(y @ W_q, num_heads)  # (B, h, T, head_dim)
        k, v = (reference_split(memory @ W, num_heads) for W in (W_k, W_v))  # (B, h, S, head_dim)
        d = q.shape[-1] if scale == "head_dim" else y.shape[-1]
        scores = q @ np.swapaxes(k, -1, -2) / math.sqrt(d)  # (B, h, T, S)
        mask = cross_mask if use_mask else np.ones_like(cross_mask)
        if causal:
            mask = mask & (np.arange(k.shape[-2])[None, :] <= np.arange(q.shape[-2])[:, None])
        weights = reference_softmax(np.where(mask, scores, -np.inf))
        weights = np.nan_to_num(weights)  # a query with nothing to read gets zero weights
        out = merge(weights @ v)  # (B, T, d_model)
        if output_matrix:
            out = out @ W_o
        return out.astype(y.dtype), weights.astype(y.dtype)

    return attention


CROSS = Exercise(
    name="multi_head_cross_attention",
    function="multi_head_cross_attention",
    params=("y", "memory", "W_q", "W_k", "W_v", "W_o", "num_heads", "cross_mask"),
    lesson=LESSON,
    reference=_reference_cross,
    outputs=("output", "weights"),
    cases=(
        Case(
            "padded_sources",
            "y: float32 (2, 5, 12), memory: (2, 7, 12), W_*: (12, 12), num_heads = 3, "
            "cross_mask: bool (2, 1, 5, 7) for source lengths [7, 4]",
            _cross_case(2, 5, 7, 12, 3, [7, 4]),
            seed=1604,
            points=2.0,
        ),
        Case(
            "short_source",
            "y: float32 (3, 6, 8), memory: (3, 4, 8), W_*: (8, 8), num_heads = 2, "
            "cross_mask: bool (3, 1, 6, 4) for source lengths [4, 1, 3]",
            _cross_case(3, 6, 4, 8, 2, [4, 1, 3]),
            seed=1605,
            points=2.0,
        ),
        Case(
            "float64",
            "y: float64 (1, 3, 16), memory: (1, 9, 16), W_*: (16, 16), num_heads = 4, "
            "cross_mask: bool (1, 1, 3, 9) for source length [9]",
            _cross_case(1, 3, 9, 16, 4, [9], np.float64),
            seed=1606,
        ),
    ),
    hidden={
        "padded_sources": (
            Case(
                "one_target_one_head",
                "y: float32 (2, 1, 6), memory: (2, 5, 6), W_*: (6, 6), num_heads = 1, cross_mask: bool (2, 1, 1, 5) "
                "for source lengths [5, 3]: one decoding step, a single head",
                _cross_case(2, 1, 5, 6, 1, [5, 3]),
                seed=3073,
            ),
        ),
        "short_source": (
            Case(
                "one_source_position",
                "y: float32 (3, 4, 8), memory: (3, 1, 8), W_*: (8, 8), num_heads = 2, cross_mask: bool (3, 1, 4, 1) "
                "for source lengths [1, 1, 1]: every weight is 1",
                _cross_case(3, 4, 1, 8, 2, [1, 1, 1]),
                seed=3074,
            ),
        ),
    },
    invariants=(within_zero_and_one(1), rows_sum_to_one(1), zero_where_masked(1, 7)),
    mistakes=(
        Mistake(
            "mask ignored",
            "Pass cross_mask to the attention: without it the queries also read the padded source positions.",
            _cross_variant(use_mask=False),
        ),
        Mistake(
            "causal cross-attention",
            "Cross-attention is not causal (no is_causal=True): output position i may read every real source "
            "character, also those at positions j > i.",
            _cross_variant(causal=True),
        ),
        Mistake("heads merged in the wrong order", WRONG_ORDER_MERGE, _cross_variant(merge=merge_heads_no_transpose)),
        Mistake(
            "scaled by sqrt(d_model)",
            "Each head attends over head_dim = d_model / num_heads features: scale by 1/sqrt(head_dim) "
            "(scaled_dot_product_attention does it for you).",
            _cross_variant(scale="d_model"),
        ),
        Mistake(
            "no output projection",
            "After merging the heads, mix them with the output matrix: output = merged @ W_o.",
            _cross_variant(output_matrix=False),
        ),
    ),
    hints={
        "type": "Return both results as a tuple: return output, weights.",
        "raised": "Queries come from y (y @ W_q is (B, T, d_model)), keys and values from memory "
        "(memory @ W_k is (B, S, d_model)); split each into heads, (B, h, T or S, head_dim). The package's "
        "scaled_dot_product_attention returns the weights only when asked: with return_weights=True it returns "
        "(output, weights), without it the output alone (and unpacking that splits its batch axis).",
        "shape": "The output has one row per OUTPUT position, (B, T, d_model) like y; the weights are (B, h, T, S): "
        "queries from the decoder, keys from the encoder. Swapping y and memory swaps T and S. The weights come "
        "from scaled_dot_product_attention(..., return_weights=True), which returns (output, weights); without "
        "return_weights=True it returns the output only.",
        "values": "q = split_heads(y @ W_q), k = split_heads(memory @ W_k), v = split_heads(memory @ W_v); "
        "attention with mask=cross_mask; merge_heads; then @ W_o.",
    },
)


# --------------------------------------------------------------------------- greedy decoding


def _greedy(step_scores, bos, eos, pad, *, pad_after_eos=True, write_eos=True, read="last"):
    """The loop, with the classic mistakes as switches. step_scores: (B, max_new, V, V) -> tokens (B, n) int64."""
    B, max_new = step_scores.shape[:2]
    tokens = np.full((B, 1), bos, dtype=np.int64)  # (B, 1): every sequence starts from <bos>
    finished = np.zeros(B, dtype=bool)
    for t in range(max_new):
        previous = tokens[:, -1] if read == "last" else tokens[:, 0]  # (B,)
        scores = step_scores[np.arange(B), t, previous]  # (B, V): the next token's scores
        next_token = np.argmax(scores, axis=-1).astype(np.int64)  # (B,)
        ends = next_token == eos
        if pad_after_eos:
            next_token = np.where(finished, pad, next_token)
            ends = ends & ~finished
        if not write_eos:
            next_token = np.where(next_token == eos, pad, next_token)
        tokens = np.concatenate([tokens, next_token[:, None]], axis=1)  # (B, t + 2)
        finished |= ends
        if finished.all():
            break
    return tokens[:, 1:]  # (B, n): without <bos>


def _greedy_case(B, max_new, vocab, ends):
    """Scores that end sequence b with <eos> at step ends[b] (never if None); <pad>, <bos> never chosen."""

    def make(rng):
        scores = rng.standard_normal((B, max_new, vocab, vocab)).astype(np.float32)  # (B, steps, previous, next)
        scores[..., [PAD, BOS, EOS]] = -5.0
        for b, end in enumerate(ends):
            if end is not None:
                scores[b, end:, :, EOS] = 5.0  # from step `end` on, <eos> is the best next token
        return scores, BOS, EOS, PAD

    return make


GREEDY = Exercise(
    name="greedy_decode",
    function="greedy_decode",
    params=("step_scores", "bos", "eos", "pad"),
    lesson=LESSON,
    reference=_greedy,
    cases=(
        Case(
            "all_end",
            "step_scores: float32 (3, 8, 7, 7), bos = 1, eos = 2, pad = 0; the sequences end at steps 2, 5, 3",
            _greedy_case(3, 8, 7, [2, 5, 3]),
            seed=1607,
            points=2.0,
        ),
        Case(
            "one_never_ends",
            "step_scores: float32 (2, 5, 9, 9), bos = 1, eos = 2, pad = 0; the first ends at step 1, the second never",
            _greedy_case(2, 5, 9, [1, None]),
            seed=1608,
        ),
        Case(
            "eos_first",
            "step_scores: float32 (4, 6, 6, 6), bos = 1, eos = 2, pad = 0; the sequences end at steps 0, 2, 4, 1",
            _greedy_case(4, 6, 6, [0, 2, 4, 1]),
            seed=1609,
        ),
    ),
    hidden={
        "all_end": (
            Case(
                "one_sentence",
                "step_scores: float32 (1, 6, 8, 8), bos = 1, eos = 2, pad = 0; a batch of one, ending at step 3",
                _greedy_case(1, 6, 8, [3]),
                seed=3075,
            ),
        ),
        "one_never_ends": (
            Case(
                "one_step",
                "step_scores: float32 (3, 1, 5, 5), bos = 1, eos = 2, pad = 0; a single step, the second sequence "
                "ends at it",
                _greedy_case(3, 1, 5, [None, 0, None]),
                seed=3076,
            ),
        ),
    },
    mistakes=(
        Mistake(
            "no padding after eos",
            "Once a sequence has written <eos> it is finished: write pad for it at every later step (keep a "
            "boolean `finished` per sequence), whatever its scores say.",
            lambda s, bos, eos, pad: _greedy(s, bos, eos, pad, pad_after_eos=False),
        ),
        Mistake(
            "eos not written",
            "Keep the <eos> itself in the output: it is the token that ends the sequence; pad comes only after it.",
            lambda s, bos, eos, pad: _greedy(s, bos, eos, pad, write_eos=False),
        ),
        Mistake(
            "always reads <bos>",
            "At each step the scores depend on the token written last, tokens[:, -1], not on the first one: "
            "append every new token to the sequence before the next step.",
            lambda s, bos, eos, pad: _greedy(s, bos, eos, pad, read="first"),
        ),
    ),
    hints={
        "raised": "step_scores[np.arange(B), t, previous] gives the (B, V) scores of step t for each sequence's "
        "previous token; np.argmax(..., axis=-1) picks the next tokens.",
        "dtype": "Token ids are integers: start from np.full((B, 1), bos, dtype=np.int64) and keep np.argmax's "
        "int64 ids.",
        "shape": "Return (B, n) without the <bos> column, and stop as soon as every sequence has written <eos> "
        "(n can be smaller than max_new = step_scores.shape[1]).",
        "values": "Step t reads step_scores[b, t, last token]; the first step's last token is <bos>. After a "
        "sequence's <eos>, write pad.",
    },
)


# --------------------------------------------------------------------------- the three attentions' shapes (predict)


def _weight_shapes(B, T, S, num_heads, *, cross=("T", "S"), decoder=("T", "T"), heads=True):
    sizes = {"T": T, "S": S}
    h = num_heads if heads else 1
    rows = [(B, h, S, S), (B, h, *(sizes[a] for a in decoder)), (B, h, *(sizes[a] for a in cross))]
    return np.asarray(rows, dtype=np.int64)


SHAPES = Exercise(
    name="attention_weight_shapes",
    function="attention_weight_shapes",
    params=("B", "T", "S", "num_heads"),
    lesson=LESSON,
    reference=_weight_shapes,
    cases=(
        Case(
            "small",
            "B = 2, T = 5, S = 7, num_heads = 3",
            lambda rng: (2, 5, 7, 3),
            seed=1631,
            secret=weight_shapes_case((1, 3), (4, 6), (7, 9), (2, 3)),
        ),
        Case(
            "short_source",
            "B = 4, T = 9, S = 6, num_heads = 2: a source shorter than the target",
            lambda rng: (4, 9, 6, 2),
            seed=1632,
            secret=weight_shapes_case((3, 5), (8, 10), (5, 7), (2, 2)),
            points=2.0,
        ),
        Case(
            "one_sequence",
            "B = 1, T = 11, S = 13, num_heads = 8",
            lambda rng: (1, 11, 13, 8),
            seed=1633,
            secret=weight_shapes_case((1, 1), (8, 12), (13, 16), (5, 8)),
        ),
    ),
    mistakes=(
        Mistake(
            "cross-attention transposed",
            "In cross-attention the QUERIES are the decoder's T positions and the keys the encoder's S positions: "
            "rows are queries, so its weights are (B, h, T, S).",
            lambda B, T, S, h: _weight_shapes(B, T, S, h, cross=("S", "T")),
        ),
        Mistake(
            "decoder self-attention over the source",
            "The decoder's self-attention reads the target written so far, queries and keys both from the T "
            "positions: (B, h, T, T). Only cross-attention reaches the source.",
            lambda B, T, S, h: _weight_shapes(B, T, S, h, decoder=("T", "S")),
        ),
        Mistake(
            "heads merged",
            "Every head has its own weights: the head axis h stays in the weights, (B, h, ., .); only the outputs "
            "are merged.",
            lambda B, T, S, h: _weight_shapes(B, T, S, h, heads=False),
        ),
    ),
    hints={
        "type": "Return a NumPy int64 array: np.array([[...], [...], [...]], dtype=np.int64).",
        "shape": "One row per attention (encoder self, decoder self, cross), four numbers per row (B, h, queries, "
        "keys): a (3, 4) array.",
        "dtype": "Shapes are whole numbers: build the array with dtype=np.int64.",
        "values": "For each attention ask: where do its queries come from (they give the rows), where do its keys "
        "come from (the columns)? The batch and the head axes come first.",
    },
)

EXERCISES = (MASKS, CROSS, GREEDY, SHAPES)
