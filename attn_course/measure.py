"""Measuring what the lessons measure: time per call, peak memory, slopes on log-log axes.

The lessons on cost (10-14) and the CPU benchmark (``python -m attn_course.bench cpu``)
use these helpers:

* ``time_attention(fn, *args)``: warm-up calls, then the best and the median
  of timed calls (``time.perf_counter``);
* ``peak_memory(fn, *args)``: the peak bytes a call allocates, traced by
  ``tracemalloc`` (which sees NumPy's allocations, not torch's or CuPy's);
* ``scaling_curve`` and ``loglog_slope``: time and memory as ``N`` grows, and
  the exponent ``p`` of ``cost ~ N^p`` fitted on log-log axes;
* ``random_qkv`` (random inputs: zeros would run faster) and
  ``naive_attention``, the textbook NumPy version that materialises the
  ``(..., L, S)`` scores, to compare against.
"""

from __future__ import annotations

import math
import statistics
import time
import tracemalloc
from dataclasses import dataclass

import numpy as np

__all__ = ["Timing", "loglog_slope", "naive_attention", "peak_memory", "random_qkv", "scaling_curve", "time_attention"]


@dataclass
class Timing:
    """Seconds per call: the best and the median of ``runs`` timed calls."""

    best: float
    median: float
    runs: int


def time_attention(fn, *args, repeats: int = 5, warmup: int = 2, **kwargs) -> Timing:
    """Time ``fn(*args, **kwargs)``: ``warmup`` untimed calls, then ``repeats`` timed ones.

    The first calls pay for things a steady state does not (thread pools,
    BLAS buffers, first touch of memory): they are run but not counted.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1; got {repeats}")
    for _ in range(warmup):
        fn(*args, **kwargs)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args, **kwargs)
        seconds.append(time.perf_counter() - start)
    return Timing(min(seconds), statistics.median(seconds), repeats)


def peak_memory(fn, *args, **kwargs) -> int:
    """Peak bytes allocated by one call of ``fn(*args, **kwargs)`` above what was allocated before.

    Measured with ``tracemalloc``, which sees NumPy's allocations (and the
    Python objects'); torch's and CuPy's allocations are not seen.
    """
    fn(*args, **kwargs)  # warm up: caches and pools made on the first call are not the function's work
    already_tracing = tracemalloc.is_tracing()
    if not already_tracing:
        tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        fn(*args, **kwargs)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        if not already_tracing:
            tracemalloc.stop()
    return max(0, peak - before)


def scaling_curve(fn, sizes, make_inputs, *, repeats: int = 5, memory: bool = False, **kwargs) -> list[dict]:
    """Time (and optionally trace the peak memory of) ``fn(*make_inputs(N), **kwargs)`` for each ``N`` in ``sizes``.

    Returns one dict per size: ``{"N", "best_s", "median_s", "runs", "peak_bytes"}``
    (``peak_bytes`` None unless ``memory``).
    """
    curve = []
    for size in sizes:
        inputs = make_inputs(size)
        timing = time_attention(fn, *inputs, repeats=repeats, **kwargs)
        peak = peak_memory(fn, *inputs, **kwargs) if memory else None
        curve.append(
            {"N": size, "best_s": timing.best, "median_s": timing.median, "runs": timing.runs, "peak_bytes": peak}
        )
    return curve


def loglog_slope(sizes, values) -> float:
    """The slope of ``log(values)`` against ``log(sizes)`` (least squares): ``values ~ N^slope``."""
    sizes, values = np.asarray(sizes, dtype=float), np.asarray(values, dtype=float)
    if sizes.size < 2:
        return math.nan
    return float(np.polyfit(np.log(sizes), np.log(values), 1)[0])


def random_qkv(batch: int, heads: int, n: int, d: int, dtype=np.float32, seed: int = 0):
    """Standard-normal ``q, k, v`` of shape ``(batch, heads, n, d)`` (random: zeros would run faster)."""
    rng = np.random.default_rng(seed)
    return tuple(rng.standard_normal((batch, heads, n, d), dtype=np.float32).astype(dtype) for _ in range(3))


def naive_attention(q, k, v, mask=None, is_causal=False):
    """The textbook NumPy version: materialise the ``(..., L, S)`` scores, stable softmax, weights @ v.

    ``mask`` (boolean, True = may attend) and ``is_causal`` combine; every row
    must allow at least one key (this version does not guard 0 / 0).
    """
    scores = q @ np.swapaxes(k, -1, -2) / math.sqrt(q.shape[-1])  # (..., L, S)
    if is_causal:
        below = np.tril(np.ones(scores.shape[-2:], dtype=bool))  # (L, S): key j <= query i
        mask = below if mask is None else mask & below
    if mask is not None:
        scores = np.where(mask, scores, -np.inf)
    weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
    weights /= weights.sum(axis=-1, keepdims=True)
    return weights @ v  # (..., L, dv)
