"""Exercises of lesson 19, attention at inference: ``solutions/19_attention_at_inference.ipynb``.

* ``decode_step(q_new, k_new, v_new, k_cache, v_cache)`` (debug: a buggy version is
  given): append the ``t`` new keys and values to the cache, then attend from the
  ``t`` new queries to every cached key and causally among themselves (the
  causal mask aligned at the bottom right: new query ``i`` sees keys
  ``j <= S - t + i``). Returns ``(out (..., t, dv), keys (..., S, d), values (..., S, dv))``.
* ``grouped_query_attention(q, k, v)``: ``q (Hq, L, d)``, ``k, v (Hkv, S, .)``:
  query head ``h`` reads key/value head ``h // (Hq / Hkv)`` (no mask).
* ``alibi_slopes(num_heads)``: Press et al.'s slopes, float64 ``(num_heads,)``.
* ``alibi_bias(num_heads, query_positions, key_positions)``: ``-m_h |p_i - p_j|``,
  float64 ``(num_heads, L, S)``.
* ``rolling_buffer_slots(length, window, sinks)``: after positions ``0 .. length-1``
  were appended one by one to a cache of ``sinks + window`` slots (position
  ``p < sinks`` in slot ``p``, otherwise slot ``sinks + (p - sinks) % window``), the
  position each slot holds, ``-1`` for a slot never written: int64 ``(sinks + window,)``.
* ``window_visibility(query_positions, key_positions, window, sinks)``: boolean
  ``(t, n)``: query ``p`` sees key ``j`` when ``j <= p`` and (``p - j < window`` or
  ``j < sinks``), a window of ``window`` positions including the query's own.
* ``cache_bytes(layers, kv_heads, head_dim, positions, itemsize, batch)`` (predict, then
  verify: the learner first predicts one model's numbers on paper): the key/value cache
  bytes for each key/value head count in ``kv_heads``, int64 like ``kv_heads``.

References: ``attn_course.scaled_dot_product_attention`` (with ``bias`` and
``enable_gqa``), ``attn_course.masks.causal_mask(..., align="bottom_right")``,
``attn_course.alibi_slopes``, ``attn_course.alibi_bias``, ``attn_course.KVCache``
and ``attn_course.cache.decode_mask``. The classic mistakes (the top-left causal
mask when decoding, attending before appending, tiling the key/value heads instead
of repeating each in place, the power-of-two slope formula for other head counts,
distances from array indices instead of positions, an off-by-one window, forgetting
that keys AND values are cached) each give their own hint.
"""

from __future__ import annotations

import numpy as np

from ...attention import scaled_dot_product_attention
from ...cache import KVCache, decode_mask
from ...masks import causal_mask
from ...positions import alibi_bias as reference_bias
from ...positions import alibi_slopes as reference_slopes
from ..judge import Case, Exercise, Mistake
from .inputs import normal_array
from .secret_inputs import alibi_case, cache_bytes_case, draw_from, slots_case, visibility_case

__all__ = ["EXERCISES"]

LESSON = "19_attention_at_inference"


# --------------------------------------------------------------------------- one decode step (debug)


def _decode_step(q_new, k_new, v_new, k_cache, v_cache, *, align="bottom_right", append_first=True, causal=True):
    keys = np.concatenate([k_cache, k_new], axis=-2)  # (..., S, d)
    values = np.concatenate([v_cache, v_new], axis=-2)  # (..., S, dv)
    t, S = q_new.shape[-2], keys.shape[-2]
    if append_first:
        mask = causal_mask(t, S, align=align) if causal else None
        out = scaled_dot_product_attention(q_new, keys, values, mask)
    else:  # the new queries see only the old cache
        out = scaled_dot_product_attention(q_new, k_cache, v_cache)
    return out, keys, values


def _decode_case(batch, t, cached, d=4, dv=6, dtype=np.float32):
    def make(rng):
        return (
            normal_array(rng, (*batch, t, d), dtype),
            normal_array(rng, (*batch, t, d), dtype),
            normal_array(rng, (*batch, t, dv), dtype),
            normal_array(rng, (*batch, cached, d), dtype),
            normal_array(rng, (*batch, cached, dv), dtype),
        )

    return make


DECODE = Exercise(
    name="decode_step",
    function="decode_step",
    params=("q_new", "k_new", "v_new", "k_cache", "v_cache"),
    lesson=LESSON,
    reference=_decode_step,
    outputs=("out", "keys", "values"),
    cases=(
        Case("one_token", "1 new position after 6 cached; q, k: (1, 4), v: (1, 6)", _decode_case((), 1, 6), seed=1901),
        Case(
            "chunk",
            "3 new positions after 4 cached, 2 heads: q, k (2, 3, 4), v (2, 3, 6), cache (2, 4, .)",
            _decode_case((2,), 3, 4),
            seed=1902,
            points=2.0,
        ),
        Case(
            "float64_batch",
            "float64, batch 2 x 3 heads, 2 new positions after 5 cached",
            _decode_case((2, 3), 2, 5, dtype=np.float64),
            seed=1903,
        ),
    ),
    # edge cases a learner never sees (the grader runs them after the public case of the same name passed)
    hidden={
        "chunk": (
            Case(
                "empty_cache",
                "the first step, 3 new positions and nothing cached; q, k: (3, 4), v: (3, 6), k_cache: (0, 4), "
                "v_cache: (0, 6): plain causal attention over the chunk",
                _decode_case((), 3, 0),
                seed=3086,
            ),
        ),
        "one_token": (
            Case(
                "first_token",
                "the very first token: q, k: (1, 4), v: (1, 6), k_cache: (0, 4), v_cache: (0, 6): it sees only itself",
                _decode_case((), 1, 0),
                seed=3087,
            ),
        ),
    },
    mistakes=(
        Mistake(
            "top-left causal alignment",
            "is_causal (and np.tril on the (t, S) rectangle) aligns the diagonal at the top left: new query i "
            "then sees keys 0..i only, most of the cache is ignored. The new queries are the LAST t positions: "
            "query i may see keys j <= (S - t) + i (bottom-right alignment).",
            lambda *args: _decode_step(*args, align="top_left"),
        ),
        Mistake(
            "attending before appending",
            "Append the new keys and values to the cache first: each new query must also see its own key (and "
            "the earlier new ones).",
            lambda *args: _decode_step(*args, append_first=False),
        ),
        Mistake(
            "no causal mask among the new positions",
            "With several new positions, the earlier ones must not see the later ones: mask keys j > (S - t) + i.",
            lambda *args: _decode_step(*args, causal=False),
        ),
    ),
    hints={
        "shape": "out has one row per NEW position (..., t, dv); keys and values hold the cache and the new "
        "positions, (..., S_cached + t, .).",
        "values": "Query i of the t new ones is position (S - t) + i of the sequence: build the mask from "
        "np.arange(t)[:, None] + (S - t) >= np.arange(S)[None, :].",
    },
)


# --------------------------------------------------------------------------- grouped-query attention


def _gqa(q, k, v, *, order="repeat"):
    group = q.shape[-3] // k.shape[-3]
    if order == "repeat":
        return scaled_dot_product_attention(q, k, v, enable_gqa=True)
    k, v = np.tile(k, (group, 1, 1)), np.tile(v, (group, 1, 1))  # kv heads 0, 1, 0, 1, ...
    return scaled_dot_product_attention(q, k, v)


def _gqa_case(query_heads, kv_heads, L=5, S=7, d=4, dv=6, dtype=np.float32):
    def make(rng):
        return (
            normal_array(rng, (query_heads, L, d), dtype),
            normal_array(rng, (kv_heads, S, d), dtype),
            normal_array(rng, (kv_heads, S, dv), dtype),
        )

    return make


GQA = Exercise(
    name="grouped_query_attention",
    function="grouped_query_attention",
    params=("q", "k", "v"),
    lesson=LESSON,
    reference=_gqa,
    cases=(
        Case("groups_of_3", "q: (6, 5, 4), k: (2, 7, 4), v: (2, 7, 6)", _gqa_case(6, 2), seed=1911),
        Case("groups_of_2", "q: (8, 5, 4), k: (4, 7, 4), v: (4, 7, 6)", _gqa_case(8, 4), seed=1912, points=2.0),
        Case(
            "multi_query",
            "q: (4, 3, 8), k: (1, 9, 8), v: (1, 9, 5): one key/value head",
            _gqa_case(4, 1, 3, 9, 8, 5),
            seed=1913,
        ),
    ),
    hidden={
        "groups_of_2": (
            Case(
                "groups_of_1",
                "q: (3, 4, 5), k: (3, 6, 5), v: (3, 6, 2): as many key/value heads as query heads (plain multi-head)",
                _gqa_case(3, 3, 4, 6, 5, 2),
                seed=3088,
            ),
        ),
    },
    mistakes=(
        Mistake(
            "heads repeated in the wrong order",
            "Query head h reads key/value head h // g (g = Hq / Hkv): the first g query heads share kv head 0. "
            "Repeat each key/value head in place (np.repeat(k, g, axis=0): 0, 0, 1, 1), do not tile the stack "
            "(np.tile: 0, 1, 0, 1).",
            lambda q, k, v: _gqa(q, k, v, order="tile"),
        ),
    ),
    hints={
        "shape": "One output head per QUERY head: (Hq, L, dv).",
        "raised": "Make k and v as many heads as q first (np.repeat along the head axis), then attend head by head.",
    },
)


# --------------------------------------------------------------------------- ALiBi


def _power_of_two_rule(num_heads):
    return 2.0 ** (-8.0 * np.arange(1, num_heads + 1) / num_heads)


SLOPES = Exercise(
    name="alibi_slopes",
    function="alibi_slopes",
    params=("num_heads",),
    lesson=LESSON,
    reference=reference_slopes,
    cases=(
        Case("eight", "num_heads = 8", lambda rng: (8,), seed=1921, secret=lambda rng: (draw_from(rng, (4, 16, 32)),)),
        Case(
            "six",
            "num_heads = 6: not a power of two",
            lambda rng: (6,),
            seed=1922,
            secret=lambda rng: (draw_from(rng, (3, 5, 7)),),
            points=2.0,
        ),
        Case(
            "twelve",
            "num_heads = 12",
            lambda rng: (12,),
            seed=1923,
            secret=lambda rng: (draw_from(rng, (10, 14, 20, 24)),),
        ),
        Case("one", "num_heads = 1", lambda rng: (1,), seed=1924, secret=lambda rng: (draw_from(rng, (2, 4, 16, 64)),)),
    ),
    mistakes=(
        Mistake(
            "the power-of-two formula for any head count",
            "2^(-8h/n) is the rule only when n is a power of two. Otherwise take the 2^k slopes of the largest "
            "power of two below n, then every other slope (the 1st, 3rd, 5th, ...) of 2^(k+1) heads until there "
            "are n.",
            _power_of_two_rule,
        ),
        Mistake(
            "slopes sorted",
            "Keep the paper's order: the 2^k slopes first, then the ones taken from 2^(k+1) heads; do not sort them.",
            lambda n: np.sort(reference_slopes(n))[::-1],
        ),
        Mistake(
            "h counted from 0",
            "The first slope is 2^(-8/n), not 2^0 = 1: h runs from 1 to n.",
            lambda n: 2.0 ** (-8.0 * np.arange(n) / n),
        ),
    ),
    hints={
        "dtype": "Return float64 (NumPy's default for 2.0 ** ...).",
        "shape": "One slope per head: (num_heads,).",
    },
)


def _bias(num_heads, query_positions, key_positions, *, sign=-1.0, absolute=True, use_indices=False):
    if use_indices:
        query_positions, key_positions = np.arange(len(query_positions)), np.arange(len(key_positions))
    distance = np.asarray(query_positions, dtype=np.float64)[:, None] - np.asarray(key_positions, dtype=np.float64)
    distance = np.abs(distance) if absolute else distance
    return sign * reference_slopes(num_heads)[:, None, None] * distance + 0.0  # (h, L, S)


def _bias_case(num_heads, query_positions, key_positions):
    return lambda rng: (
        num_heads,
        np.asarray(query_positions, dtype=np.int64),
        np.asarray(key_positions, dtype=np.int64),
    )


BIAS = Exercise(
    name="alibi_bias",
    function="alibi_bias",
    params=("num_heads", "query_positions", "key_positions"),
    lesson=LESSON,
    reference=lambda h, qp, kp: reference_bias(h, qp, kp, dtype="float64"),
    cases=(
        Case(
            "square",
            "num_heads = 4, query and key positions 0..5",
            _bias_case(4, range(6), range(6)),
            seed=1931,
            secret=alibi_case("square"),
        ),
        Case(
            "decoding",
            "num_heads = 8, queries at positions [5, 6, 7] after a cache: keys 0..7",
            _bias_case(8, [5, 6, 7], range(8)),
            seed=1932,
            secret=alibi_case("decoding"),
            points=2.0,
        ),
        Case(
            "rolling_buffer",
            "num_heads = 2, one query at position 9, keys of a rolling buffer: positions [0, 8, 9, 6, 7]",
            _bias_case(2, [9], [0, 8, 9, 6, 7]),
            seed=1933,
            secret=alibi_case("rolling_buffer"),
        ),
    ),
    hidden={
        "decoding": (
            Case(
                "one_head",
                "num_heads = 1, query_positions [2, 3, 4], key_positions [0, 1, 2, 3, 4]: a single head, (1, 3, 5)",
                _bias_case(1, [2, 3, 4], range(5)),
                seed=3089,
            ),
        ),
    },
    mistakes=(
        Mistake(
            "a reward instead of a penalty",
            "The bias is -m_h |p_i - p_j|: distant keys are pushed DOWN (it is never positive).",
            lambda *args: _bias(*args, sign=1.0),
        ),
        Mistake(
            "signed distance",
            "Use the absolute distance |p_i - p_j|; without it keys on one side get a bonus.",
            lambda *args: _bias(*args, absolute=False),
        ),
        Mistake(
            "array indices instead of positions",
            "Distances come from the positions you are given, not from np.arange(L) and np.arange(S): with a cache "
            "the queries are the LAST positions, and a rolling buffer holds keys out of order.",
            lambda *args: _bias(*args, use_indices=True),
        ),
    ),
    hints={
        "shape": "One (L, S) table per head: (num_heads, len(query_positions), len(key_positions)).",
        "dtype": "Return float64.",
    },
)


# --------------------------------------------------------------------------- the rolling buffer


def _slots(length, window, sinks, *, sink_offset=True):
    if not sink_offset:  # every position in slot p % (sinks + window): sinks get overwritten
        held = np.full(sinks + window, -1, dtype=np.int64)
        for position in range(length):
            held[position % (sinks + window)] = position
        return held
    cache = KVCache(window=window, sinks=sinks) if window else KVCache()
    for _ in range(length):
        cache.append(np.zeros((1, 1)), np.zeros((1, 1)))
    held = np.full(sinks + window, -1, dtype=np.int64)
    held[: len(cache.positions)] = cache.positions
    return held


def _slots_case(length, window, sinks):
    return lambda rng: (length, window, sinks)


SLOTS = Exercise(
    name="rolling_buffer_slots",
    function="rolling_buffer_slots",
    params=("length", "window", "sinks"),
    lesson=LESSON,
    reference=_slots,
    cases=(
        Case(
            "not_full",
            "length = 3, window = 4, sinks = 1: the buffer is not full yet",
            _slots_case(3, 4, 1),
            seed=1941,
            secret=slots_case(lambda window: (2, window), (3, 6), 1),
        ),
        Case(
            "wrapped",
            "length = 11, window = 4, sinks = 1",
            _slots_case(11, 4, 1),
            seed=1942,
            secret=slots_case(lambda window: (2 * window + 2, 4 * window), (3, 6), 1),
            points=2.0,
        ),
        Case(
            "no_sinks",
            "length = 9, window = 5, sinks = 0",
            _slots_case(9, 5, 0),
            seed=1943,
            secret=slots_case(lambda window: (window + 2, 3 * window), (3, 7), 0),
        ),
        Case(
            "two_sinks",
            "length = 20, window = 3, sinks = 2",
            _slots_case(20, 3, 2),
            seed=1944,
            secret=slots_case(lambda window: (3 * window, 8 * window), (2, 4), 2),
        ),
    ),
    hidden={
        "not_full": (
            Case(
                "nothing_written",
                "length = 0, window = 3, sinks = 1: no position written yet, every slot is -1",
                _slots_case(0, 3, 1),
                seed=3090,
            ),
        ),
    },
    mistakes=(
        Mistake(
            "sinks overwritten",
            "The sink slots are never reused: position p >= sinks goes to slot sinks + (p - sinks) % window, "
            "not p % (sinks + window).",
            lambda length, window, sinks: _slots(length, window, sinks, sink_offset=False),
        ),
    ),
    hints={
        "shape": "One entry per slot: sinks + window of them.",
        "dtype": "Positions are whole numbers: int64, with -1 for empty slots.",
    },
)


def _visibility(query_positions, key_positions, window, sinks, *, reach=0, with_sinks=True):
    return decode_mask(query_positions, key_positions, window=window + reach, sinks=sinks if with_sinks else 0)


def _visibility_case(query_positions, key_positions, window, sinks):
    return lambda rng: (
        np.asarray(query_positions, dtype=np.int64),
        np.asarray(key_positions, dtype=np.int64),
        window,
        sinks,
    )


VISIBILITY = Exercise(
    name="window_visibility",
    function="window_visibility",
    params=("query_positions", "key_positions", "window", "sinks"),
    lesson=LESSON,
    reference=_visibility,
    cases=(
        Case(
            "in_order",
            "queries [6], keys 0..6, window = 3, sinks = 1",
            _visibility_case([6], range(7), 3, 1),
            seed=1951,
            secret=visibility_case("in_order"),
        ),
        Case(
            "rolling_buffer",
            "queries [9, 10], keys in buffer order [0, 8, 9, 10, 7], window = 4, sinks = 1",
            _visibility_case([9, 10], [0, 8, 9, 10, 7], 4, 1),
            seed=1952,
            secret=visibility_case("rolling_buffer"),
            points=2.0,
        ),
        Case(
            "no_sinks",
            "queries [4, 5, 6], keys 0..6, window = 2, sinks = 0",
            _visibility_case([4, 5, 6], range(7), 2, 0),
            seed=1953,
            secret=visibility_case("no_sinks"),
        ),
    ),
    hidden={
        "no_sinks": (
            Case(
                "window_beyond_the_positions",
                "query_positions [3, 4], key_positions [0 .. 4], window = 10, sinks = 0: the window reaches every "
                "earlier position, only the causal rule is left",
                _visibility_case([3, 4], range(5), 10, 0),
                seed=3091,
            ),
        ),
    },
    mistakes=(
        Mistake(
            "off-by-one window",
            "A window of w positions INCLUDES the query's own: keys p - w + 1 .. p, so p - j < w (not <= w).",
            lambda *args: _visibility(*args, reach=1),
        ),
        Mistake(
            "sinks ignored",
            "Keys at positions j < sinks stay visible to every later query, however far back.",
            lambda *args: _visibility(*args, with_sinks=False),
        ),
    ),
    hints={
        "shape": "One row per query, one column per key: (len(query_positions), len(key_positions)).",
        "dtype": "Return booleans (True = may attend).",
    },
)


# --------------------------------------------------------------------------- predict the cache's size


def _cache_bytes(layers, kv_heads, head_dim, positions, itemsize, batch, *, values=True, with_batch=True, bytes_=True):
    factor = (2 if values else 1) * (batch if with_batch else 1) * (itemsize if bytes_ else 1)
    return (factor * layers * head_dim * positions) * np.asarray(kv_heads, dtype=np.int64)  # (n,) int64


def _bytes_case(layers, kv_heads, head_dim, positions, itemsize, batch):
    return lambda rng: (layers, np.asarray(kv_heads, dtype=np.int64), head_dim, positions, itemsize, batch)


PREDICTION = Exercise(
    name="cache_bytes",
    function="cache_bytes",
    params=("layers", "kv_heads", "head_dim", "positions", "itemsize", "batch"),
    lesson=LESSON,
    reference=_cache_bytes,
    cases=(
        Case(
            "predicted_model",
            "the model you predicted: 48 layers, kv_heads [64, 8, 1], head_dim 128, 4096 positions, float16, batch 2",
            _bytes_case(48, [64, 8, 1], 128, 4096, 2, 2),
            seed=1961,
            secret=cache_bytes_case(
                (24, 80),
                lambda rng: [draw_from(rng, (32, 40, 48, 64)), draw_from(rng, (4, 8)), 1],
                (64, 128),
                (2048, 4096, 8192),
                2,
                (2, 4),
            ),
            points=2.0,
        ),
        Case(
            "lesson_layout",
            "the lesson's 7B-class layout: 32 layers, kv_heads [32, 8, 1], head_dim 128, 4096 positions, float16, "
            "batch 1",
            _bytes_case(32, [32, 8, 1], 128, 4096, 2, 1),
            seed=1962,
            secret=cache_bytes_case(
                (24, 40), lambda rng: [draw_from(rng, (24, 32, 40)), 8, 1], (128,), (2048, 4096, 8192), 2, (1, 1)
            ),
        ),
        Case(
            "small_float32",
            "6 layers, kv_heads [12, 4, 3], head_dim 64, 1000 positions, float32, batch 5",
            _bytes_case(6, [12, 4, 3], 64, 1000, 4, 5),
            seed=1963,
            secret=cache_bytes_case(
                (4, 12),
                lambda rng: sorted(rng.choice(np.arange(2, 17), 3, replace=False).tolist(), reverse=True),
                (32, 64),
                range(500, 2001),
                4,
                (3, 5, 6, 7),
            ),
        ),
    ),
    mistakes=(
        Mistake(
            "keys only",
            "The cache holds a key AND a value vector per position: a factor 2.",
            lambda *args: _cache_bytes(*args, values=False),
        ),
        Mistake(
            "one sequence",
            "Every sequence of the batch has its own cache: multiply by the batch size.",
            lambda *args: _cache_bytes(*args, with_batch=False),
        ),
        Mistake(
            "numbers, not bytes",
            "That counts numbers; each takes itemsize bytes (2 for float16, 4 for float32).",
            lambda *args: _cache_bytes(*args, bytes_=False),
        ),
    ),
    hints={
        "type": "Return a NumPy int64 array, one entry per entry of kv_heads.",
        "shape": "One size per key/value head count: the shape of kv_heads.",
        "dtype": "Bytes are whole numbers: int64.",
        "values": "bytes = 2 (keys and values) x layers x kv heads x head_dim x positions x itemsize x batch.",
    },
)

EXERCISES = (DECODE, GQA, SLOPES, BIAS, SLOTS, VISIBILITY, PREDICTION)
