"""CPU benchmarks of dense, tiled, sparse and linear attention (``python -m attn_course.bench cpu``).

Every figure of the CPU goals in ``performance.md`` is measured here, side by
side in one process, and printed next to its goal:

* dense NumPy attention (``scaled_dot_product_attention``) against torch's
  ``scaled_dot_product_attention`` and the textbook NumPy version that
  materialises the ``(L, S)`` scores;
* tiled attention against dense: time, and peak memory traced by ``tracemalloc``;
* causal tile skipping against the same tiled code without it;
* a sliding window (``sparse_attention``) against dense attention with the
  window as an ``(N, N)`` boolean mask;
* linear attention against softmax attention, and where the two cross;
* the backward pass: the textbook ``attention_backward`` against FlashAttention-2's
  ``tiled_attention_backward`` (peak memory, time) and against torch's autograd;
* how time and memory grow with ``N``: straight lines on log-log axes, whose
  fitted slopes are the exponents (2 for ``O(N^2)``, 1 for ``O(N)``).

Times are ``time.perf_counter`` over repeated calls after warm-up calls (best
and median reported); the thread counts are printed with the table. Before
anything is timed, every implementation's result is checked against a float64
reference (on a sample of query rows at large sizes): a wrong result is refused,
never reported. The public functions run twice where they have a CPU fast path:
as called (the fast path) and inside ``attn_course.fast.disabled()`` (the
reference code the lessons teach), side by side. The measuring helpers
(``time_attention``, ``peak_memory``, ...) live in ``attn_course.measure``.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import math
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .. import fast
from ..attention import scaled_dot_product_attention
from ..backward import attention_backward, tiled_attention_backward
from ..cache import KVCache
from ..fast.threads import num_threads
from ..linear import linear_attention
from ..masks import causal_mask, sliding_window, sliding_window_mask
from ..measure import loglog_slope, naive_attention, peak_memory, random_qkv
from ..multihead import MultiHeadAttention
from ..sparse import sparse_attention
from ..tiled import tiled_attention
from ..tolerances import tolerance_for
from .machine import describe_machine

__all__ = ["Goal", "Measurement", "WrongResultError", "check_result", "expected_rows", "run"]

MIB = 2**20
DEFAULT_OUT = Path("benchmarks/results")

# implementation names, as the table and the CSV file show them
DENSE = "dense NumPy (attn_course)"
NAIVE = "naive NumPy (materialised)"
TORCH = "torch SDPA"
SPARSE = "sparse_attention (predicate, block 128)"
SPARSE_DEFAULT = "sparse_attention (predicate, block 64: the default)"
WINDOW_BLOCK = 128  # for w = 256: tiles of 128 rows make matrix products 4x larger than 64 for 1.2x the pairs
DENSE_MASKED = "dense NumPy, (N, N) mask"
REFERENCE = " [reference path]"  # the same function inside attn_course.fast.disabled(): the lesson's code
SOFTMAX = "dense softmax (attn_course)"
LINEAR = "linear (elu + 1)"
SCALING = "scaling with N"
LINEAR_SECTION = "linear vs softmax"


# --------------------------------------------------------------------------- measuring


# --------------------------------------------------------------------------- checking before timing

SAMPLE_ROWS = 40  # query rows checked against float64 per result (first, last, and spread between)


class WrongResultError(AssertionError):
    """An implementation returned a wrong result: the benchmark refuses to time and report it."""


def _as_numpy64(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _elu_plus_one(x):
    return np.exp(np.minimum(x, 0.0)) + np.maximum(x, 0.0)


def expected_rows(kind: str, inputs, options) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, expected)``: float64 outputs of a sample of query rows, by the plain formula.

    kind: ``"softmax"`` (``inputs`` = q, k, v and optionally a mask, an array or a
    predicate; ``is_causal`` in ``options``) or ``"linear"`` (elu + 1 features;
    ``causal`` in ``options``).
    """
    q, k, v = (_as_numpy64(x) for x in inputs[:3])
    L, S = q.shape[-2], k.shape[-2]
    rows = np.unique(np.linspace(0, L - 1, SAMPLE_ROWS).astype(np.int64))
    q_rows = q[..., rows, :]  # (..., R, d)
    if kind == "linear":
        causal = bool(options.get("causal", False))
        phi_q, phi_k = _elu_plus_one(q_rows), _elu_plus_one(k)
        out = []
        for position, row in enumerate(rows):
            last = row + 1 if causal else S
            state = np.swapaxes(phi_k[..., :last, :], -1, -2) @ v[..., :last, :]  # (..., d, dv)
            normaliser = phi_k[..., :last, :].sum(axis=-2)  # (..., d)
            numerator = phi_q[..., position, :][..., None, :] @ state  # (..., 1, dv)
            denominator = (phi_q[..., position, :] * normaliser).sum(axis=-1)[..., None, None]
            out.append(numerator / denominator)
        return rows, np.concatenate(out, axis=-2)
    mask = inputs[3] if len(inputs) > 3 else options.get("mask")
    scores = q_rows @ np.swapaxes(k, -1, -2) / math.sqrt(q.shape[-1])  # (..., R, S)
    allowed = np.ones((rows.size, S), dtype=bool)
    if mask is not None:
        if callable(mask) and not hasattr(mask, "shape"):
            allowed &= np.asarray(mask(rows[:, None], np.arange(S)[None, :]), dtype=bool)
        else:
            allowed = allowed & np.asarray(mask)[..., rows, :]
    if options.get("is_causal", False):
        allowed &= np.arange(S)[None, :] <= rows[:, None]
    scores = np.where(allowed, scores, -np.inf)
    weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return rows, (weights / weights.sum(axis=-1, keepdims=True)) @ v


def check_result(impl: str, kind: str, fn, inputs, options) -> float:
    """Call ``fn`` once and compare a sample of its rows with float64; the largest error, or ``WrongResultError``."""
    out = _as_numpy64(fn(*inputs, **options))
    rows, expected = expected_rows(kind, inputs, options)
    actual = out[..., rows, :]
    tolerance = tolerance_for(np.float32)
    bad = ~np.isclose(actual, expected, rtol=10 * tolerance["rtol"], atol=10 * tolerance["atol"])
    error = float(np.max(np.abs(actual - expected)))
    if bad.any() or not np.isfinite(actual).all():
        raise WrongResultError(
            f"{impl}: {int(bad.sum())} of {bad.size} checked outputs differ from the float64 reference "
            f"(largest error {error:.3g}); refusing to time a wrong result"
        )
    return error


def reference_path(fn):
    """``fn`` run inside ``attn_course.fast.disabled()``: the reference code the lessons teach."""

    def call(*args, **kwargs):
        with fast.disabled():
            return fn(*args, **kwargs)

    return call


def gradients64(q, k, v, grad_out, rows_per_block: int = 256):
    """dq, dk, dv of attention (no mask) in float64, the textbook formulas on blocks of query rows.

    Only ``(rows_per_block, S)`` of the weights exist at a time, so that the check
    fits in memory at every size the benchmark runs.
    """
    scale = 1 / math.sqrt(q.shape[-1])
    dq, dk, dv = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)
    for start in range(0, q.shape[-2], rows_per_block):
        rows = slice(start, start + rows_per_block)
        scores = q[..., rows, :] @ np.swapaxes(k, -1, -2) * scale  # (..., R, S)
        weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
        weights /= weights.sum(axis=-1, keepdims=True)
        d_weights = grad_out[..., rows, :] @ np.swapaxes(v, -1, -2)  # (..., R, S)
        d_scores = weights * (d_weights - (d_weights * weights).sum(axis=-1, keepdims=True))
        dq[..., rows, :] = d_scores @ k * scale
        dk += np.swapaxes(d_scores, -1, -2) @ q[..., rows, :] * scale
        dv += np.swapaxes(weights, -1, -2) @ grad_out[..., rows, :]
    return dq, dk, dv


def check_gradients(impl: str, grads, q, k, v, grad_out) -> float:
    """Compare ``(dq, dk, dv)`` with float64 gradients; the largest error, or ``WrongResultError``."""
    tolerance = tolerance_for(np.float32)
    largest = 0.0
    for name, grad, expected in zip(("dq", "dk", "dv"), grads, gradients64(q, k, v, grad_out), strict=True):
        actual = _as_numpy64(grad)
        bad = ~np.isclose(actual, expected, rtol=10 * tolerance["rtol"], atol=10 * tolerance["atol"])
        error = float(np.max(np.abs(actual - expected)))
        if bad.any() or not np.isfinite(actual).all():
            raise WrongResultError(
                f"{impl}: {int(bad.sum())} of {bad.size} entries of {name} differ from the float64 reference "
                f"(largest error {error:.3g}); refusing to time a wrong result"
            )
        largest = max(largest, error)
    return largest


# --------------------------------------------------------------------------- the suite


@dataclass
class Measurement:
    """One row of the table and of the CSV file."""

    section: str
    impl: str
    B: int
    H: int
    N: int
    d: int
    causal: bool = False
    window: int | None = None
    best_ms: float | None = None
    median_ms: float | None = None
    runs: int = 0
    peak_mib: float | None = None
    note: str = ""


@dataclass
class Goal:
    """A goal of performance.md: a ratio measured in this run against its bound."""

    name: str
    value: float
    bound: float
    at_least: bool  # True: value >= bound is the goal; False: value <= bound
    unit: str = "x"
    note: str = ""

    @property
    def met(self) -> bool:
        return self.value >= self.bound if self.at_least else self.value <= self.bound


@dataclass
class Sizes:
    """The sizes one run uses: the goals' sizes, or small ones for ``--quick``."""

    d: int = 64
    compare_heads: int = 8  # dense NumPy vs torch, tiled vs dense, causal skipping, linear vs softmax
    compare_n: int = 2048
    goal_n: int = 4096
    scaling_heads: int = 2  # the sweeps over N
    scaling_n: list = field(default_factory=lambda: [1024, 2048, 4096, 8192, 16384])
    window: int = 256
    window_n: list = field(default_factory=lambda: [1024, 2048, 4096, 8192, 16384])
    sparse_only_n: list = field(default_factory=lambda: [32768, 65536])
    linear_n: list = field(default_factory=lambda: [64, 128, 256, 512, 1024, 2048, 4096])
    tiled_block: int = 512  # keys per tile of the tiled runs (the API's default, 128, is measured beside it)
    repeats: int = 7
    naive_limit_bytes: int = 3 * 2**30  # the materialised scores the naive version may allocate
    quick: bool = False

    @classmethod
    def for_quick(cls) -> Sizes:
        return cls(
            d=32,
            compare_heads=2,
            compare_n=256,
            goal_n=512,
            scaling_heads=1,
            scaling_n=[128, 256],
            window=16,
            window_n=[128, 256],
            sparse_only_n=[1024],
            linear_n=[32, 256],
            tiled_block=64,
            repeats=2,
            naive_limit_bytes=64 * MIB,
            quick=True,
        )

    def repeats_for(self, n: int) -> int:
        """Fewer timed calls at the largest sizes (said in the table's runs column)."""
        if n >= 16384:
            return min(self.repeats, 3)
        if n >= 8192:
            return min(self.repeats, 4)
        return self.repeats


def _torch():
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None, None
    return torch, F


class _Suite:
    """Runs the sections one after another, collecting measurements and goals."""

    def __init__(self, sizes: Sizes, log):
        self.sizes = sizes
        self.log = log
        self.rows: list[Measurement] = []
        self.goals: list[Goal] = []
        self.crossover = None
        self.torch, self.F = _torch()
        self._queue = None  # measurements waiting to be timed side by side
        self.largest_error = 0.0  # the largest error against float64 of any checked result

    def measure(self, section, impl, fn, inputs, options=None, *, causal=False, window=None, memory=False, note="",
                kind="softmax"):  # fmt: skip
        """Check ``fn(*inputs, **options)`` against float64, then time it (and trace its memory).

        inputs are ``(1, H, N, d)`` arrays (and a mask); ``kind`` names the
        formula that checks the result (``"softmax"`` or ``"linear"``).
        Inside ``side_by_side()`` the call is queued and timed later, in turn
        with the others of the block; the returned row is filled in then.
        """
        _, heads, n, d = tuple(inputs[0].shape)
        options = options or {}
        error = check_result(impl, kind, fn, inputs, options)
        self.largest_error = max(self.largest_error, error)
        row = Measurement(section, impl, 1, heads, n, d, causal, window, note=note)
        entry = (row, fn, inputs, options, memory)
        if self._queue is not None:
            self._queue.append(entry)
        else:
            self._time_in_turn([entry])
        return row

    @contextlib.contextmanager
    def side_by_side(self):
        """Time the measurements queued in this block in turn (A, B, C, A, B, C, ...).

        On a shared machine the load changes from second to second; timing the
        implementations that a ratio compares in alternation exposes them to
        the same conditions, and the best of each run is the least disturbed.
        """
        self._queue = []
        try:
            yield
            queued = self._queue
        finally:
            self._queue = None
        self._time_in_turn(queued)

    def _time_in_turn(self, entries):
        largest = max(row.N for row, *_ in entries)
        turns = self.sizes.repeats_for(largest)
        warmup = 1 if largest >= 8192 or self.sizes.quick else 2
        warm_seconds = []
        for _, fn, inputs, options, _ in entries:
            for _ in range(warmup):
                start = time.perf_counter()
                fn(*inputs, **options)
            warm_seconds.append(time.perf_counter() - start)
        # an implementation much faster than the slowest of the block is called a few times per turn:
        # more samples for the figure that a short burst of load would distort the most
        most = 1 if self.sizes.quick else 4
        calls_per_turn = [max(1, min(most, round(max(warm_seconds) / max(s, 1e-9)))) for s in warm_seconds]
        seconds = [[] for _ in entries]
        for _ in range(turns):
            for times, calls, (_, fn, inputs, options, _) in zip(seconds, calls_per_turn, entries, strict=True):
                for _ in range(calls):
                    start = time.perf_counter()
                    fn(*inputs, **options)
                    times.append(time.perf_counter() - start)
        for times, (row, fn, inputs, options, memory) in zip(seconds, entries, strict=True):
            row.best_ms, row.median_ms, row.runs = min(times) * 1e3, statistics.median(times) * 1e3, len(times)
            if memory:
                row.peak_mib = peak_memory(fn, *inputs, **options) / MIB
            self._add(row)

    def skipped(self, section, impl, heads, n, note):
        return self._add(Measurement(section, impl, 1, heads, n, self.sizes.d, note=note))

    def _add(self, row: Measurement) -> Measurement:
        self.rows.append(row)
        self.log(_format_row(row))
        return row

    def goal(self, name, value, bound, at_least, unit="x"):
        self.goals.append(Goal(name, value, bound, at_least, unit))

    def torch_tensors(self, arrays):
        return tuple(self.torch.from_numpy(x) for x in arrays)

    # ---------------------------------------------------------------- sections

    def dense_vs_torch(self):
        heads, n, d = self.sizes.compare_heads, self.sizes.compare_n, self.sizes.d
        qkv = random_qkv(1, heads, n, d)
        section, causal = "dense vs torch", {"is_causal": True}
        sdpa = None if self.torch is None else self.F.scaled_dot_product_attention
        with self.side_by_side():
            dense = self.measure(section, DENSE, scaled_dot_product_attention, qkv)
            dense_reference = self.measure(
                section, DENSE + REFERENCE, reference_path(scaled_dot_product_attention), qkv
            )
            naive = self.measure(section, NAIVE, naive_attention, qkv)
            if sdpa is not None:
                torch_plain = self.measure(section, TORCH, sdpa, self.torch_tensors(qkv))
        with self.side_by_side():
            dense_causal = self.measure(section, DENSE, scaled_dot_product_attention, qkv, causal, causal=True)
            if sdpa is not None:
                torch_causal = self.measure(section, TORCH, sdpa, self.torch_tensors(qkv), causal, causal=True)
        if sdpa is None:
            self.skipped(section, TORCH, heads, n, "torch is not installed: no ratio against it")
            return
        where = f"B1 H{heads} N{n} d{d}"
        self.goal(f"dense NumPy / torch SDPA time ({where})", dense.best_ms / torch_plain.best_ms, 1.5, False)
        self.goal(f"dense NumPy, reference path / torch SDPA time ({where}; for reference)",
                  dense_reference.best_ms / torch_plain.best_ms, math.inf, False)  # fmt: skip
        self.goal(f"naive NumPy / torch SDPA time ({where}; for reference)", naive.best_ms / torch_plain.best_ms,
                  math.inf, False)  # fmt: skip
        self.goal(f"dense NumPy / torch SDPA time, causal ({where}; for reference)",
                  dense_causal.best_ms / torch_causal.best_ms, math.inf, False)  # fmt: skip

    def tiled_vs_dense(self):
        heads, n, d, block = self.sizes.compare_heads, self.sizes.goal_n, self.sizes.d, self.sizes.tiled_block
        qkv = random_qkv(1, heads, n, d)
        section, options = "tiled vs dense", {"block_size": block}
        with self.side_by_side():
            dense = self.measure(section, DENSE, scaled_dot_product_attention, qkv, memory=True)
            tiled = self.measure(section, f"tiled, block {block}", tiled_attention, qkv, options, memory=True)
            default = self.measure(section, "tiled, block 128 (default)", tiled_attention, qkv, memory=True)
            causal = self.measure(section, f"tiled, block {block}", tiled_attention, qkv,
                                  {**options, "is_causal": True}, causal=True, memory=True)  # fmt: skip
            tiled_reference = self.measure(section, f"tiled, block {block}" + REFERENCE,
                                           reference_path(tiled_attention), qkv, options, memory=True)  # fmt: skip
            causal_reference = self.measure(section, f"tiled, block {block}" + REFERENCE,
                                            reference_path(tiled_attention), qkv, {**options, "is_causal": True},
                                            causal=True, memory=True)  # fmt: skip
        scores_bytes = heads * n * n * 4
        if 2 * scores_bytes <= self.sizes.naive_limit_bytes:
            reference_mib = self.measure(section, NAIVE, naive_attention, qkv, memory=True).peak_mib
            what = "traced peak of the naive dense"
        else:
            reference_mib, what = scores_bytes / MIB, "size of the dense scores"
        where = f"B1 H{heads} N{n} d{d}"
        self.goal(f"tiled (block {block}) / dense NumPy time ({where})", tiled.best_ms / dense.best_ms, 1.1, False)
        self.goal(f"tiled (block 128, the default) / dense NumPy time ({where}; for reference)",
                  default.best_ms / dense.best_ms, math.inf, False)  # fmt: skip
        self.goal(f"tiled peak memory / dense ({where}; dense = {what})", 100 * tiled.peak_mib / reference_mib,
                  5.0, False, unit="%")  # fmt: skip
        self.goal(f"causal tile skipping: tiled non-causal / causal time ({where})", tiled.best_ms / causal.best_ms,
                  1.6, True)  # fmt: skip
        self.goal(f"tiled, reference path / dense NumPy time ({where}; for reference)",
                  tiled_reference.best_ms / dense.best_ms, math.inf, False)  # fmt: skip
        self.goal(f"tiled, reference path: peak memory / dense ({where}; for reference)",
                  100 * tiled_reference.peak_mib / reference_mib, math.inf, False, unit="%")  # fmt: skip
        self.goal(f"causal tile skipping, reference path: non-causal / causal time ({where}; for reference)",
                  tiled_reference.best_ms / causal_reference.best_ms, math.inf, True)  # fmt: skip

    def scaling(self):
        heads, d, block = self.sizes.scaling_heads, self.sizes.d, self.sizes.tiled_block
        section, options = SCALING, {"block_size": block}
        for n in self.sizes.scaling_n:
            qkv = random_qkv(1, heads, n, d)
            scores_bytes = heads * n * n * 4
            with self.side_by_side():
                self.measure(section, DENSE, scaled_dot_product_attention, qkv, memory=True)
                self.measure(section, f"tiled, block {block}", tiled_attention, qkv, options, memory=True)
                self.measure(section, f"tiled, block {block}", tiled_attention, qkv, {**options, "is_causal": True},
                             causal=True, memory=True)  # fmt: skip
                if 2 * scores_bytes <= self.sizes.naive_limit_bytes:
                    self.measure(section, NAIVE, naive_attention, qkv, memory=True)
                if self.torch is not None:
                    self.measure(section, TORCH, self.F.scaled_dot_product_attention, self.torch_tensors(qkv))
            if 2 * scores_bytes > self.sizes.naive_limit_bytes:
                self.skipped(section, NAIVE, heads, n, f"not run: its scores alone need {scores_bytes / 2**30:.0f} GiB")

    def sliding_window(self):
        heads, d, window = self.sizes.scaling_heads, self.sizes.d, self.sizes.window
        section, predicate = self.window_section, sliding_window(window)
        blocks = {"block_size": min(WINDOW_BLOCK, 2 * window)}
        for n in self.sizes.window_n:
            qkv = random_qkv(1, heads, n, d)
            mask = sliding_window_mask(n, window)  # (n, n) booleans
            with self.side_by_side():
                self.measure(section, SPARSE, sparse_attention, (*qkv, predicate), blocks, window=window, memory=True)
                self.measure(section, DENSE_MASKED, scaled_dot_product_attention, (*qkv, mask), window=window)
                if n == max(self.sizes.window_n):
                    self.measure(section, SPARSE_DEFAULT, sparse_attention, (*qkv, predicate), window=window)
                    self.measure(section, SPARSE + REFERENCE, reference_path(sparse_attention), (*qkv, predicate),
                                 blocks, window=window)  # fmt: skip
            del mask
        for n in self.sizes.sparse_only_n:
            qkv = random_qkv(1, heads, n, d)
            self.measure(section, SPARSE, sparse_attention, (*qkv, predicate), blocks, window=window, memory=True,
                         note="dense-masked not run: its (N, N) mask alone is N^2 bytes")  # fmt: skip
        largest = max(self.sizes.window_n)
        sparse, dense = self._find(section, SPARSE, largest), self._find(section, DENSE_MASKED, largest)
        self.goal(f"sliding window w={window}: dense-masked / sparse time (B1 H{heads} N{largest} d{d}; "
                  f"sparse block {blocks['block_size']}; ideal {largest / (2 * window + 1):.0f}x)",
                  dense.best_ms / sparse.best_ms, 20.0, True)  # fmt: skip
        sparse_reference = self._find(section, SPARSE + REFERENCE, largest)
        self.goal(f"sliding window w={window}: dense-masked / sparse time, sparse on its reference path "
                  f"(B1 H{heads} N{largest} d{d}; for reference)", dense.best_ms / sparse_reference.best_ms,
                  math.inf, True)  # fmt: skip

    @property
    def window_section(self) -> str:
        return f"sliding window w={self.sizes.window}"

    def linear_vs_softmax(self):
        heads, d = self.sizes.compare_heads, self.sizes.d
        section = LINEAR_SECTION
        for n in self.sizes.linear_n:
            qkv = random_qkv(1, heads, n, d)
            with self.side_by_side():
                softmax_row = self.measure(section, SOFTMAX, scaled_dot_product_attention, qkv)
                linear_row = self.measure(section, LINEAR, linear_attention, qkv, memory=True, kind="linear")
                self.measure(section, LINEAR, linear_attention, qkv, {"causal": True}, causal=True, memory=True,
                             kind="linear")  # fmt: skip
            if self.crossover is None and linear_row.best_ms < softmax_row.best_ms:
                self.crossover = n
        largest = max(self.sizes.linear_n)
        softmax_row, linear_row = self._find(section, SOFTMAX, largest), self._find(section, LINEAR, largest)
        where = f"B1 H{heads} N{largest} d{d}"
        note = f"linear first faster at N = {self.crossover}" if self.crossover else "never faster in this range"
        self.goal(f"linear vs softmax: softmax / linear time ({where}; {note})",
                  softmax_row.best_ms / linear_row.best_ms, 10.0, True)  # fmt: skip

    def backward(self):
        """The backward pass: peak memory and time of the textbook and tiled backward, and torch's autograd."""
        section, d = "backward", self.sizes.d
        for n in (self.sizes.goal_n, 2 * self.sizes.goal_n):  # N = 4096 and 8192 in the full run
            q, k, v, grad_out = random_qkv(1, 1, n, d) + random_qkv(1, 1, n, d, seed=1)[:1]
            out, lse = tiled_attention(q, k, v, return_lse=True)
            timed = n == self.sizes.goal_n  # the time at N = 4096; the peak memory at both sizes
            # the textbook algorithm is attention_backward's reference code (the tiled backward has no fast path);
            # its CPU fast path (row blocks, threads) is measured beside it
            textbook = self.measure_backward(section, "attention_backward (textbook)" + REFERENCE,
                                             reference_path(attention_backward), (q, k, v, grad_out), memory=True,
                                             timed=timed)  # fmt: skip
            textbook_fast = self.measure_backward(section, "attention_backward (fast path)", attention_backward,
                                                  (q, k, v, grad_out), memory=True, timed=timed)  # fmt: skip
            tiled = self.measure_backward(section, "tiled_attention_backward (block 128)", tiled_attention_backward,
                                          (q, k, v, out, lse, grad_out), memory=True, timed=timed)  # fmt: skip
            square_mib = n * n * 4 / MIB
            self.goal(f"tiled backward peak memory / one (N, N) float32 array (B1 H1 N{n} d{d}; "
                      f"textbook backward: {textbook.peak_mib / square_mib:.1f})", tiled.peak_mib / square_mib,
                      1 / 8, False)  # fmt: skip
            if timed:
                self.goal(f"tiled / textbook backward time, both reference code (B1 H1 N{n} d{d})",
                          tiled.best_ms / textbook.best_ms, 1.3, False)  # fmt: skip
                self.goal(f"tiled / textbook backward time, the textbook on its fast path (B1 H1 N{n} d{d}; "
                          "for reference)", tiled.best_ms / textbook_fast.best_ms, math.inf, False)  # fmt: skip
        heads, n = self.sizes.compare_heads, self.sizes.compare_n
        q, k, v, grad_out = random_qkv(1, heads, n, d) + random_qkv(1, heads, n, d, seed=1)[:1]

        def numpy_forward_backward(q, k, v, grad_out):
            scaled_dot_product_attention(q, k, v)
            return attention_backward(q, k, v, grad_out)

        def tiled_forward_backward(q, k, v, grad_out):
            out, lse = tiled_attention(q, k, v, return_lse=True)
            return tiled_attention_backward(q, k, v, out, lse, grad_out)

        with self.side_by_side():
            ours = self.measure_backward(section, "forward + attention_backward (NumPy)", numpy_forward_backward,
                                         (q, k, v, grad_out))  # fmt: skip
            self.measure_backward(section, "tiled forward + tiled backward (NumPy)", tiled_forward_backward,
                                  (q, k, v, grad_out))  # fmt: skip
            if self.torch is not None:
                torch_row = self.measure_backward(section, "torch SDPA forward + autograd backward",
                                                  self.torch_forward_backward,
                                                  self.torch_tensors((q, k, v, grad_out)))  # fmt: skip
        where = f"B1 H{heads} N{n} d{d}"
        if self.torch is None:
            self.skipped(section, "torch SDPA forward + autograd backward", heads, n, "torch is not installed")
            return
        self.goal(f"forward + attention_backward / torch forward + autograd backward time ({where})",
                  ours.best_ms / torch_row.best_ms, 2.0, False)  # fmt: skip

    def torch_forward_backward(self, q, k, v, grad_out):
        """torch's ``scaled_dot_product_attention`` and its autograd backward: the gradients of q, k, v."""
        leaves = tuple(x.detach().requires_grad_(True) for x in (q, k, v))
        out = self.F.scaled_dot_product_attention(*leaves)
        return self.torch.autograd.grad(out, leaves, grad_out)

    def measure_backward(self, section, impl, fn, inputs, *, memory=False, timed=True):
        """Check the gradients ``fn(*inputs)`` against float64, then time them (and trace the peak memory).

        inputs start with q, k, v (1, H, N, d) and end with grad_out; ``timed=False``
        traces the memory only.
        """
        q, k, v, grad_out = inputs[0], inputs[1], inputs[2], inputs[-1]
        _, heads, n, d = tuple(q.shape)
        error = check_gradients(impl, fn(*inputs), *(_as_numpy64(x) for x in (q, k, v, grad_out)))
        self.largest_error = max(self.largest_error, error)
        row = Measurement(section, impl, 1, heads, n, d)
        if timed:
            entry = (row, fn, inputs, {}, memory)
            if self._queue is not None:
                self._queue.append(entry)
            else:
                self._time_in_turn([entry])
        else:
            row.peak_mib = peak_memory(fn, *inputs) / MIB
            row.note = "peak memory only"
            self._add(row)
        return row

    def decoding(self):
        """Decoding with a ``KVCache``: generation with and without it; MHA, GQA, MQA; a windowed cache's memory."""
        self.generation_with_and_without_cache()
        self.decode_step_mha_gqa_mqa()
        self.windowed_cache_memory()

    def generation_with_and_without_cache(self):
        """Generating positions from a small model: every prefix recomputed, or one row per layer from a cache."""
        section, quick = "decoding", self.sizes.quick
        rng = np.random.default_rng(0)

        # generating new_tokens positions from a small model (residual stack of causal attention layers),
        #    each new input derived from the previous output: every prefix recomputed, or one row per layer
        d_model, num_heads, num_layers, new_tokens = (64, 4, 2, 64) if quick else (256, 4, 2, 512)
        layers = [MultiHeadAttention(d_model, num_heads, seed=seed) for seed in range(num_layers)]
        prompt = rng.standard_normal((1, 1, d_model)).astype(np.float32)  # (1, 1, d_model)

        def next_input(h):  # (1, 1, d_model): the newest output, normalised (stands in for sampling a token)
            return h / np.sqrt(np.mean(h * h, axis=-1, keepdims=True) + 1e-6)

        def without_cache():
            x = prompt
            for _ in range(new_tokens):
                h = x
                for layer in layers:
                    h = h + layer(h, is_causal=True)  # (1, n, d_model): the whole prefix again
                x = np.concatenate([x, next_input(h[:, -1:])], axis=1)
            return x

        def with_cache():
            caches, inputs = [KVCache() for _ in layers], [prompt]
            for _ in range(new_tokens):
                h = inputs[-1]
                for layer, cache in zip(layers, caches, strict=True):
                    h = h + layer.decode(h, cache)  # (1, 1, d_model): the newest position only
                inputs.append(next_input(h))
            return np.concatenate(inputs, axis=1)

        error = float(np.max(np.abs(with_cache() - without_cache())))  # also the warm-up call of each
        if not error <= 1e-3:
            raise WrongResultError(f"decoding with the KVCache differs from recomputing the prefix by {error:.2g}")
        self.largest_error = max(self.largest_error, error)
        where = f"{num_layers} layers, d_model {d_model}, {num_heads} heads, {new_tokens} new positions"
        timed = self._time_calls({"recompute the prefix (no cache)": without_cache, "KVCache": with_cache},
                                 turns=1 if quick else 2)  # fmt: skip
        rows = {}
        for impl, seconds in timed.items():
            rows[impl] = self._add(Measurement(section, f"generate: {impl}", 1, num_heads, new_tokens,
                                               d_model // num_heads, True, best_ms=min(seconds) * 1e3,
                                               median_ms=statistics.median(seconds) * 1e3, runs=len(seconds),
                                               note=where))  # fmt: skip
        self.goal(f"decoding: recompute-the-prefix / KVCache time ({where}; same results to {error:.1g})",
                  rows["recompute the prefix (no cache)"].best_ms / rows["KVCache"].best_ms, 10.0, True)  # fmt: skip

    def decode_step_mha_gqa_mqa(self):
        """One decode step with n cached positions: MHA, GQA and MQA at the same d_model and query heads."""
        section, quick = "decoding", self.sizes.quick
        rng = np.random.default_rng(1)
        d_model, num_heads, n = (128, 8, 512) if quick else (1024, 16, 4096)
        head_dim = d_model // num_heads
        x = rng.standard_normal((1, n + 1, d_model)).astype(np.float32)  # (1, n + 1, d_model)
        step_rows = {}
        for num_kv_heads in (num_heads, max(1, num_heads // 4), 1):
            mha = MultiHeadAttention(d_model, num_heads, num_kv_heads=num_kv_heads, seed=1)
            cache = mha.new_cache()
            mha.decode(x[:, :n], cache)  # the prompt's n positions in one chunk
            step = mha.decode(x[:, n:], cache)  # (1, 1, d_model): position n
            expected = mha(x, is_causal=True)[:, -1:]
            error = float(np.max(np.abs(step - expected)))
            if not error <= 1e-4:
                raise WrongResultError(f"a decode step with {num_kv_heads} kv heads differs by {error:.2g}")
            self.largest_error = max(self.largest_error, error)
            nbytes, length = cache.nbytes, cache.length  # before the timed steps add positions
            seconds = self._time_calls({"step": lambda mha=mha, cache=cache, new=x[:, n:]: mha.decode(new, cache)},
                                       turns=5 if quick else 30)["step"]  # fmt: skip
            kind = "MHA" if num_kv_heads == num_heads else ("MQA" if num_kv_heads == 1 else "GQA")
            step_rows[kind] = self._add(Measurement(
                section, f"decode step: {kind}, {num_kv_heads} kv heads", 1, num_heads, n, head_dim, True,
                best_ms=min(seconds) * 1e3, median_ms=statistics.median(seconds) * 1e3, runs=len(seconds),
                peak_mib=nbytes / MIB, note=f"peak_mib = cache bytes ({nbytes} at {length} positions)",
            ))  # fmt: skip
        where = f"d_model {d_model}, {num_heads} query heads, {n} cached positions"
        for kind in ("GQA", "MQA"):
            self.goal(f"decode step {kind} / MHA: cache bytes ({where})",
                      step_rows[kind].peak_mib / step_rows["MHA"].peak_mib, math.inf, False)  # fmt: skip
            self.goal(f"decode step {kind} / MHA: time ({where})",
                      step_rows[kind].best_ms / step_rows["MHA"].best_ms, math.inf, False)  # fmt: skip

    def windowed_cache_memory(self):
        """A windowed cache's bytes as the sequence grows, beside a cache that keeps every position."""
        section = "decoding"
        rng = np.random.default_rng(2)
        d_model, num_heads, window, sinks = 64, 4, self.sizes.window, 4
        mha = MultiHeadAttention(d_model, num_heads, seed=2)
        checkpoints = sorted(self.sizes.window_n)
        x = rng.standard_normal((1, checkpoints[-1], d_model)).astype(np.float32)
        windowed, plain = mha.new_cache(window=window, sinks=sinks), mha.new_cache()
        first = checkpoints[0]
        outputs = []
        sizes = {}
        for position in range(checkpoints[-1]):
            out = mha.decode(x[:, position : position + 1], windowed)  # (1, 1, d_model)
            mha.decode(x[:, position : position + 1], plain)
            if position < first:
                outputs.append(out)
            if position + 1 in checkpoints:
                sizes[position + 1] = (windowed.nbytes, plain.nbytes)
        sink_columns = causal_mask(first) & (np.arange(first) < sinks)  # (first, first)
        allowed = sliding_window_mask(first, window - 1, causal=True) | sink_columns  # a window of w includes the query
        error = float(np.max(np.abs(np.concatenate(outputs, axis=1) - mha(x[:, :first], mask=allowed))))
        if not error <= 1e-4:
            raise WrongResultError(f"windowed decoding differs from the windowed mask by {error:.2g}")
        self.largest_error = max(self.largest_error, error)
        for length, (windowed_bytes, plain_bytes) in sizes.items():
            for impl, nbytes in ((f"KVCache(window={window}, sinks={sinks})", windowed_bytes),
                                 ("KVCache() (keeps every position)", plain_bytes)):  # fmt: skip
                self._add(Measurement(section, f"cache memory: {impl}", 1, num_heads, length,
                                      d_model // num_heads, True, window if "window" in impl else None,
                                      peak_mib=nbytes / MIB, note="peak_mib = cache bytes"))  # fmt: skip
        smallest, largest = checkpoints[0], checkpoints[-1]
        self.goal(f"windowed KVCache bytes at N={largest} / at N={smallest} (window {window}, {sinks} sinks; "
                  f"full cache: {sizes[largest][1] / sizes[smallest][1]:.0f}x)",
                  sizes[largest][0] / sizes[smallest][0], 1.0, False)  # fmt: skip

    def _time_calls(self, calls: dict, turns: int) -> dict:
        """Seconds of each call of ``calls`` (name -> function), timed in turn ``turns`` times (after warm-up)."""
        seconds = {name: [] for name in calls}
        for _ in range(turns):
            for name, call in calls.items():
                start = time.perf_counter()
                call()
                seconds[name].append(time.perf_counter() - start)
        return seconds

    def _find(self, section, impl, n, causal=False):
        for row in self.rows:
            if row.section == section and row.impl == impl and row.N == n and row.causal == causal:
                return row
        raise KeyError((section, impl, n, causal))

    # ---------------------------------------------------------------- slopes

    def slopes(self) -> list[tuple[str, str, float]]:
        """``(curve, quantity, slope)`` fitted on log-log axes to each curve of the sweeps."""
        curves = {}
        for row in self.rows:
            if row.section in (SCALING, self.window_section, LINEAR_SECTION):
                curves.setdefault(row.impl + (", causal" if row.causal else ""), []).append(row)
        fitted = []
        for name, rows in curves.items():
            timed = [row for row in rows if row.best_ms is not None]
            if len(timed) >= 2:
                fitted.append((name, "time", loglog_slope([r.N for r in timed], [r.best_ms for r in timed])))
            traced = [row for row in rows if row.peak_mib]
            if len(traced) >= 2:
                fitted.append((name, "peak memory", loglog_slope([r.N for r in traced], [r.peak_mib for r in traced])))
        return fitted


def _format_row(row: Measurement) -> str:
    shape = f"B{row.B} H{row.H} N{row.N} d{row.d}"
    extra = ("causal " if row.causal else "") + (f"w{row.window}" if row.window else "")
    best = f"{row.best_ms:10.2f}" if row.best_ms is not None else f"{'-':>10s}"
    median = f"{row.median_ms:10.2f}" if row.median_ms is not None else f"{'-':>10s}"
    peak = f"{row.peak_mib:10.2f}" if row.peak_mib is not None else f"{'':>10s}"
    return f"{row.section:22s} {row.impl:45s} {shape:22s} {extra:12s} {best} {median} {row.runs:4d} {peak}  {row.note}"


def _header() -> str:
    columns = f"{'section':22s} {'implementation':45s} {'shape':22s} {'':12s} {'best ms':>10s} {'median ms':>10s}"
    return columns + f" {'runs':>4s} {'peak MiB':>10s}"


# --------------------------------------------------------------------------- output


def thread_report() -> str:
    """The thread counts behind the figures."""
    torch, _ = _torch()
    torch_threads = torch.get_num_threads() if torch is not None else "n/a"
    names = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "ATTN_COURSE_NUM_THREADS")
    env = ", ".join(f"{name}={os.environ[name]}" for name in names if name in os.environ)
    return (
        f"threads: os.cpu_count()={os.cpu_count()}, attn_course workers={num_threads()}, "
        f"torch.get_num_threads()={torch_threads}" + (f", {env}" if env else "")
    )


def versions() -> str:
    torch, _ = _torch()
    return f"NumPy {np.__version__}, torch {torch.__version__ if torch is not None else 'not installed'}, float32"


def write_csv(rows: list[Measurement], goals: list[Goal], out: Path, stamp: dict) -> tuple[Path, Path]:
    """``cpu_benchmarks.csv`` (one row per measurement) and ``cpu_goals.csv`` (one per goal) under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    measurements = out / "cpu_benchmarks.csv"
    with measurements.open("w", newline="") as file:
        fields = [*asdict(rows[0]).keys(), *stamp.keys()]
        writer = csv.DictWriter(file, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({**asdict(row), **stamp})
    goals_path = out / "cpu_goals.csv"
    with goals_path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["goal", "value", "unit", "relation", "bound", "met", *stamp.keys()])
        for goal in goals:
            relation = ">=" if goal.at_least else "<="
            bound = "" if math.isinf(goal.bound) else goal.bound
            met = "" if math.isinf(goal.bound) else goal.met
            writer.writerow([goal.name, f"{goal.value:.4g}", goal.unit, relation, bound, met, *stamp.values()])
    return measurements, goals_path


def plot(rows: list[Measurement], sizes: Sizes, crossover, out: Path, machine: str) -> Path:
    """Four log-log panels: time and memory against N, the sliding window, linear against softmax."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no window
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 2, figsize=(13, 9.5))
    panels = [
        (axes[0, 0], "scaling with N", "best_ms", "time per call (ms)",
         f"Dense, tiled and torch attention (B1 H{sizes.scaling_heads} d{sizes.d})"),
        (axes[0, 1], "scaling with N", "peak_mib", "peak traced memory (MiB)",
         f"Peak memory of one call (tracemalloc, B1 H{sizes.scaling_heads} d{sizes.d})"),
        (axes[1, 0], f"sliding window w={sizes.window}", "best_ms", "time per call (ms)",
         f"Sliding window w={sizes.window}: sparse vs dense-masked (H{sizes.scaling_heads})"),
        (axes[1, 1], "linear vs softmax", "best_ms", "time per call (ms)",
         f"Linear vs softmax attention (B1 H{sizes.compare_heads} d{sizes.d})"),
    ]  # fmt: skip
    for ax, section, quantity, ylabel, title in panels:
        curves = {}
        for row in rows:
            value = getattr(row, quantity)
            if row.section == section and value:
                curves.setdefault(row.impl + (", causal" if row.causal else ""), []).append((row.N, value))
        for name, points in curves.items():
            ns, values = zip(*sorted(points), strict=True)
            slope = loglog_slope(ns, values)
            label = f"{name} (slope {slope:.2f})" if len(ns) > 1 else name
            ax.plot(ns, values, marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length N (tokens)")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        if curves:
            ax.legend(fontsize=8)
    if crossover:
        axes[1, 1].axvline(crossover, color="grey", linestyle="--", linewidth=1)
        axes[1, 1].annotate(f"linear faster from N = {crossover}", (crossover, axes[1, 1].get_ylim()[1]),
                            fontsize=8, ha="left", va="top")  # fmt: skip
    mode = "quick run, small sizes" if sizes.quick else "full run"
    figure.suptitle(f"CPU attention benchmarks ({mode}, float32)\n{machine}", fontsize=11)
    figure.tight_layout()
    path = out / "cpu_benchmarks.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def format_goals(goals: list[Goal], quick: bool) -> list[str]:
    lines = ["Goals (performance.md, CPU), measured in this run:"]
    for goal in goals:
        value = f"{goal.value:8.2f} {goal.unit}"
        if math.isinf(goal.bound):
            lines.append(f"  {goal.name:100s} {value}")
            continue
        relation = ">=" if goal.at_least else "<="
        verdict = "met" if goal.met else "NOT met"
        lines.append(f"  {goal.name:100s} {value}   goal {relation} {goal.bound:g} {goal.unit:2s} {verdict}")
    if quick:
        lines.append("  (--quick: small sizes, not the goals' sizes; run without --quick for the real figures)")
    return lines


def run(quick: bool = False, out: Path | str = DEFAULT_OUT, log=print) -> dict:
    """Run the CPU suite, print its table, write the CSV files and the plot under ``out``.

    Returns ``{"rows", "goals", "slopes", "csv", "goals_csv", "png"}``.
    """
    sizes = Sizes.for_quick() if quick else Sizes()
    out = Path(out)
    machine = describe_machine()
    log(f"CPU attention benchmarks ({'quick' if quick else 'full'}) on: {machine}")
    log(f"{versions()}; {thread_report()}")
    log(
        "times: time.perf_counter, best and median of `runs` calls after 1-2 warm-up calls (fewer calls at "
        "N >= 8192); the implementations a ratio compares are timed in turn, call by call, the faster ones "
        "up to 4 calls per turn"
    )
    log("")
    log(_header())
    suite = _Suite(sizes, log)
    started = time.perf_counter()
    suite.dense_vs_torch()
    suite.tiled_vs_dense()
    suite.scaling()
    suite.sliding_window()
    suite.linear_vs_softmax()
    suite.backward()
    suite.decoding()
    log("")
    slopes = suite.slopes()
    log("Fitted log-log slopes (value ~ N^slope; 2 = quadratic, 1 = linear):")
    for name, quantity, slope in slopes:
        log(f"  {name:45s} {quantity:12s} {slope:5.2f}")
    tiled_memory = [s for name, quantity, s in slopes if name.startswith("tiled") and quantity == "peak memory"]
    if tiled_memory:
        suite.goals.append(Goal("tiled peak memory grows as O(N): fitted log-log slope", max(tiled_memory), 1.2,
                                False, unit=""))  # fmt: skip
    log("")
    log(f"Every result was checked against float64 ({SAMPLE_ROWS} query rows each) before it was timed: "
        f"largest error {suite.largest_error:.2g}")  # fmt: skip
    for line in format_goals(suite.goals, quick):
        log(line)
    stamp = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "versions": versions(),
        "threads": thread_report(),
    }
    csv_path, goals_path = write_csv(suite.rows, suite.goals, out, stamp)
    png_path = plot(suite.rows, sizes, suite.crossover, out, machine)
    log("")
    log(f"wrote {csv_path}, {goals_path} and {png_path} in {time.perf_counter() - started:.0f} s")
    return {"rows": suite.rows, "goals": suite.goals, "slopes": slopes, "csv": csv_path, "goals_csv": goals_path,
            "png": png_path}  # fmt: skip
