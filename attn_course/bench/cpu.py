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
* how time and memory grow with ``N``: straight lines on log-log axes, whose
  fitted slopes are the exponents (2 for ``O(N^2)``, 1 for ``O(N)``).

Times are ``time.perf_counter`` over repeated calls after warm-up calls (best
and median reported); the thread counts are printed with the table. The
functions ``time_attention``, ``peak_memory``, ``scaling_curve`` and
``loglog_slope`` are what the lessons call at small sizes.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import math
import os
import statistics
import time
import tracemalloc
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .._parallel import num_threads
from ..attention import scaled_dot_product_attention
from ..linear import linear_attention
from ..masks import sliding_window, sliding_window_mask
from ..sparse import sparse_attention
from ..tiled import tiled_attention
from .machine import describe_machine

__all__ = [
    "Measurement",
    "Timing",
    "loglog_slope",
    "naive_attention",
    "peak_memory",
    "random_qkv",
    "run",
    "scaling_curve",
    "time_attention",
]

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
SOFTMAX = "dense softmax (attn_course)"
LINEAR = "linear (elu + 1)"
SCALING = "scaling with N"
LINEAR_SECTION = "linear vs softmax"


# --------------------------------------------------------------------------- measuring


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
    """The textbook NumPy version: materialise the ``(..., L, S)`` scores, stable softmax, weights @ v."""
    scores = q @ np.swapaxes(k, -1, -2) / math.sqrt(q.shape[-1])  # (..., L, S)
    if is_causal:
        mask = np.tril(np.ones(scores.shape[-2:], dtype=bool))
    if mask is not None:
        scores = np.where(mask, scores, -np.inf)
    weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
    weights /= weights.sum(axis=-1, keepdims=True)
    return weights @ v  # (..., L, dv)


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

    def measure(self, section, impl, fn, inputs, options=None, *, causal=False, window=None, memory=False, note=""):
        """Time ``fn(*inputs, **options)`` (and trace its memory); inputs are ``(1, H, N, d)`` arrays.

        Inside ``side_by_side()`` the call is queued and timed later, in turn
        with the others of the block; the returned row is filled in then.
        """
        _, heads, n, d = tuple(inputs[0].shape)
        row = Measurement(section, impl, 1, heads, n, d, causal, window, note=note)
        entry = (row, fn, inputs, options or {}, memory)
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
                linear_row = self.measure(section, LINEAR, linear_attention, qkv, memory=True)
                self.measure(section, LINEAR, linear_attention, qkv, {"causal": True}, causal=True, memory=True)
            if self.crossover is None and linear_row.best_ms < softmax_row.best_ms:
                self.crossover = n
        largest = max(self.sizes.linear_n)
        softmax_row, linear_row = self._find(section, SOFTMAX, largest), self._find(section, LINEAR, largest)
        where = f"B1 H{heads} N{largest} d{d}"
        note = f"linear first faster at N = {self.crossover}" if self.crossover else "never faster in this range"
        self.goal(f"linear vs softmax: softmax / linear time ({where}; {note})",
                  softmax_row.best_ms / linear_row.best_ms, 10.0, True)  # fmt: skip

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
    return f"{row.section:22s} {row.impl:30s} {shape:22s} {extra:12s} {best} {median} {row.runs:4d} {peak}  {row.note}"


def _header() -> str:
    columns = f"{'section':22s} {'implementation':30s} {'shape':22s} {'':12s} {'best ms':>10s} {'median ms':>10s}"
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
