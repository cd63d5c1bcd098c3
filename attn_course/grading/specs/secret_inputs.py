"""The grader's secret variants of cases whose public inputs are only sizes or constants.

A case whose ``make_args`` ignores its ``rng`` (``lambda rng: (6,)``) would give
the grader the very arguments the learner sees in ``test_inputs()``, so an
answer that looks its outputs up in a table computed at home would score.
These generators, passed as ``Case(..., secret=...)``, draw other sizes from the
grader's secret seed instead: the same kind of input and the same regime as the
public case (sizes that divide where the task needs it, a partial tile where the
case is about one, the same binding limit, ...), small enough that the
reference runs in milliseconds. The public case (``Case.args()`` without a
seed) is unchanged.
"""

from __future__ import annotations

import math

import numpy as np

from ... import masks
from ...cache import KVCache

__all__ = [
    "alibi_case",
    "attention_shapes_case",
    "buffer_positions",
    "cache_bytes_case",
    "crossover_case",
    "decoder_masks_case",
    "draw_float",
    "draw_from",
    "draw_int",
    "every_entry_shuffled",
    "fused_bytes_case",
    "heads_case",
    "lengths_case",
    "longest_case",
    "multiple",
    "occupancy_case",
    "partial",
    "redrawn",
    "sliding",
    "slots_case",
    "visibility_case",
    "weight_shapes_case",
    "with_unit",
]


def draw_int(rng: np.random.Generator, low: int, high: int) -> int:
    """A Python int in ``low .. high`` (both included)."""
    return int(rng.integers(low, high + 1))


def draw_float(rng: np.random.Generator, low: float, high: float) -> float:
    """A Python float in ``[low, high]``, rounded to two decimals (easy to read in a verdict)."""
    return round(float(rng.uniform(low, high)), 2)


def draw_from(rng: np.random.Generator, options):
    """One of ``options`` (a Python value, never a NumPy scalar)."""
    options = list(options)
    return options[int(rng.integers(len(options)))]


def multiple(rng: np.random.Generator, unit: int, low: int, high: int) -> int:
    """``unit`` times a count in ``low .. high``: a size made of whole blocks."""
    return unit * draw_int(rng, low, high)


def partial(rng: np.random.Generator, unit: int, low: int, high: int) -> int:
    """``unit`` times a count in ``low .. high``, plus 1 .. unit - 1: the last block is partial."""
    return unit * draw_int(rng, low, high) + draw_int(rng, 1, unit - 1)


def redrawn(make, regime, tries: int = 100):
    """A generator that draws with ``make`` (a case's own ``make_args``) until ``regime(*args)`` holds: random
    inputs whose public draw shows a classic mistake, drawn anew where that mistake shows too."""

    def make_secret(rng):
        for _ in range(tries):
            args = tuple(make(rng))
            if regime(*args):
                break
        return args

    return make_secret


def with_unit(units, make):
    """A generator that draws a unit (a block, a stride, a tile) among ``units``, then ``make(rng, unit)``."""
    return lambda rng: make(rng, draw_from(rng, units))


def _distinct(rng: np.random.Generator, ranges) -> list[int]:
    """One int from each ``(low, high)`` range, all different."""
    while True:
        values = [draw_int(rng, low, high) for low, high in ranges]
        if len(set(values)) == len(values):
            return values


# --------------------------------------------------------------------------- shapes and sizes


def attention_shapes_case(kind: str):
    """``(q_shape, k_shape, v_shape)`` as int64 arrays with L, S, d, dv all different: plain, batched or broadcast."""

    def make(rng):
        L, S, d, dv = _distinct(rng, [(2, 9)] * 4)
        if kind == "plain":
            shapes = (L, d), (S, d), (S, dv)
        elif kind == "batched":
            b = draw_int(rng, 2, 9)
            shapes = (b, L, d), (b, S, d), (b, S, dv)
        else:  # leading axes that broadcast: (b1, 1) with (b2,) and (1,)
            b1, b2 = _distinct(rng, [(2, 4), (2, 4)])
            shapes = (b1, 1, L, d), (b2, S, d), (1, S, dv)
        return tuple(np.asarray(shape, dtype=np.int64) for shape in shapes)

    return make


def heads_case(batch, heads, head_dims, lengths=(3, 9)):
    """``(B, L, d_model, num_heads)`` with num_heads dividing d_model and L unlike the other sizes."""

    def make(rng):
        B, h, head_dim = draw_int(rng, *batch), draw_int(rng, *heads), draw_int(rng, *head_dims)
        L = draw_from(rng, [n for n in range(lengths[0], lengths[1] + 1) if n not in (B, h, head_dim, h * head_dim)])
        return B, L, h * head_dim, h

    return make


def weight_shapes_case(batch, targets, sources, heads):
    """``(B, T, S, num_heads)``, all four different."""

    def make(rng):
        B, T, S, h = _distinct(rng, [batch, targets, sources, heads])
        return B, T, S, h

    return make


# --------------------------------------------------------------------------- lengths of sequences


def lengths_case(batch, sizes, kind: str):
    """``(lengths, n)``: ``kind`` "full" has one sequence of length n and one shorter, "padded" all shorter than n
    (at least 1), "empty" one of length 0 and one of length n."""

    def make(rng):
        B, n = draw_int(rng, *batch), draw_int(rng, *sizes)
        lengths = rng.integers(1, n, size=B).astype(np.int64)  # 1 .. n - 1
        order = rng.permutation(B)
        if kind in ("full", "empty"):
            lengths[order[0]] = n
        if kind == "empty":
            lengths[order[1]] = 0
        return lengths, n

    return make


def decoder_masks_case(batch, targets, sources):
    """``(target_lengths, source_lengths, num_targets, num_sources)``: one full and some padded sequences each."""

    def make(rng):
        B, T, S = draw_int(rng, *batch), draw_int(rng, *targets), draw_int(rng, *sources)
        target_lengths = rng.integers(1, T, size=B).astype(np.int64)
        source_lengths = rng.integers(1, S, size=B).astype(np.int64)
        target_lengths[draw_int(rng, 0, B - 1)] = T
        source_lengths[draw_int(rng, 0, B - 1)] = S
        return target_lengths, source_lengths, T, S

    return make


# --------------------------------------------------------------------------- memory and limits


def longest_case(memories, batches, heads, itemsize, *, rounds_up: bool):
    """``(memory_bytes, B, H, itemsize)`` whose square root has a fractional part of at least 1/2 (``rounds_up``) or
    below 1/2, as in the public case: rounding to the nearest N differs from rounding down exactly where it does there.
    """

    def make(rng):
        while True:
            memory, B, H = draw_from(rng, memories), draw_int(rng, *batches), draw_from(rng, heads)
            root = math.sqrt(memory / (B * H * itemsize))
            if (root - math.floor(root) >= 0.5) == rounds_up:
                return memory, B, H, itemsize

    return make


def crossover_case(ds, dvs):
    """``(d, dv)`` with ``d != dv`` and no tie (``2 L d dv == L**2 (d + dv)`` for no whole L), as in the public cases
    of unequal sizes."""

    def make(rng):
        while True:
            d, dv = draw_from(rng, ds), draw_from(rng, dvs)
            if d != dv and (2 * d * dv) % (d + dv):
                return d, dv

    return make


def occupancy_case(limit: str, registers_per_sm=65_536, shared_per_sm=228 * 1024, threads_per_sm=2_048, blocks=32):
    """``(threads_per_block, registers_per_thread, shared_bytes_per_block)`` whose blocks per multiprocessor are
    bound by ``limit`` alone ("registers", "shared", "threads" or "blocks"), each other limit allowing more."""

    def make(rng):
        while True:
            threads = draw_from(rng, (32, 64) if limit == "blocks" else (64, 128, 256, 512, 1024))
            registers = 8 * draw_int(rng, 2, 32 if limit == "registers" else 8)
            shared = 0 if limit == "blocks" else 1024 * draw_int(rng, 1, 120 if limit == "shared" else 16)
            limits = {
                "blocks": blocks,
                "registers": registers_per_sm // (registers * threads),
                "threads": threads_per_sm // threads,
                "shared": shared_per_sm // shared if shared else blocks + 1,
            }
            others = [value for name, value in limits.items() if name != limit]
            if limits[limit] < min(others) and limits[limit] >= 1:
                return threads, registers, shared

    return make


def fused_bytes_case(batch, heads, tiles, blocks, dims, itemsize, whole=True):
    """``(B, H, N, d, itemsize, tile)``: N whole tiles (``whole``) or with a partial last tile."""

    def make(rng):
        tile = draw_from(rng, tiles)
        N = multiple(rng, tile, *blocks) if whole else partial(rng, tile, *blocks)
        return draw_int(rng, *batch), draw_from(rng, heads), N, draw_from(rng, dims), itemsize, tile

    return make


def cache_bytes_case(layers, kv_heads, head_dims, positions, itemsize, batch):
    """``(layers, kv_heads, head_dim, positions, itemsize, batch)``; ``kv_heads(rng)`` gives the list of head
    counts, ``batch`` the batch sizes to choose from."""

    def make(rng):
        return (
            draw_int(rng, *layers),
            np.asarray(kv_heads(rng), dtype=np.int64),
            draw_from(rng, head_dims),
            draw_from(rng, positions),
            itemsize,
            draw_from(rng, batch),
        )

    return make


# --------------------------------------------------------------------------- the rolling buffer and ALiBi


def buffer_positions(length: int, window: int, sinks: int) -> np.ndarray:
    """The positions a rolling buffer holds, in slot order, after ``length`` tokens."""
    cache = KVCache(window=window, sinks=sinks)
    for _ in range(length):
        cache.append(np.zeros((1, 1)), np.zeros((1, 1)))
    return np.asarray(cache.positions, dtype=np.int64)


def slots_case(lengths, windows, sinks: int):
    """``(length, window, sinks)``; ``lengths(window)`` gives the range of lengths."""

    def make(rng):
        window = draw_int(rng, *windows)
        return draw_int(rng, *lengths(window)), window, sinks

    return make


def visibility_case(kind: str):
    """``(query_positions, key_positions, window, sinks)``: keys in order, keys of a wrapped rolling buffer, or
    three queries without sinks."""

    def make(rng):
        if kind == "in_order":
            window = draw_int(rng, 2, 4)
            last = draw_int(rng, window + 2, window + 6)
            return np.asarray([last], dtype=np.int64), np.arange(last + 1, dtype=np.int64), window, 1
        if kind == "rolling_buffer":
            window = draw_int(rng, 3, 5)
            length = draw_int(rng, window + 3, window + 9)
            keys = buffer_positions(length, window, 1)
            return np.asarray([length - 2, length - 1], dtype=np.int64), keys, window, 1
        n, window = draw_int(rng, 6, 9), draw_int(rng, 2, 3)
        return np.arange(n - 3, n, dtype=np.int64), np.arange(n, dtype=np.int64), window, 0

    return make


def alibi_case(kind: str):
    """``(num_heads, query_positions, key_positions)``: a square table, decoding after a cache, or one query over a
    wrapped rolling buffer (one sink); head counts are powers of two, as in the public cases."""

    def make(rng):
        if kind == "square":
            n = draw_int(rng, 4, 8)
            h = draw_from(rng, [k for k in (2, 4, 8, 16) if k != n])
            return h, np.arange(n, dtype=np.int64), np.arange(n, dtype=np.int64)
        if kind == "decoding":
            n, new = draw_int(rng, 6, 10), draw_int(rng, 2, 4)
            return draw_from(rng, (4, 8, 16)), np.arange(n - new, n, dtype=np.int64), np.arange(n, dtype=np.int64)
        window = draw_int(rng, 3, 5)
        length = draw_int(rng, window + 3, window + 9)
        keys = buffer_positions(length, window, 1)
        return draw_from(rng, (2, 4)), np.asarray([length - 1], dtype=np.int64), keys

    return make


def every_entry_shuffled(rng):
    """``(rows, cols)``: every entry of the (16, 8) C tile once, in a random order, as (16, 8) int64 arrays."""
    rows, cols = np.meshgrid(np.arange(16), np.arange(8), indexing="ij")
    order = rng.permutation(rows.size)
    return rows.ravel()[order].reshape(16, 8).astype(np.int64), cols.ravel()[order].reshape(16, 8).astype(np.int64)


def sliding(n_range, windows, layers):
    """``(sliding window mask, layers)``."""

    def make(rng):
        return masks.sliding_window_mask(draw_int(rng, *n_range), draw_int(rng, *windows)), layers

    return make
