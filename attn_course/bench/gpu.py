"""GPU benchmarks: our fused kernels against naive CuPy, torch SDPA and FlexAttention, timed two ways.

``python -m attn_course.bench gpu [--quick] [--out DIR]`` measures, in one
process on one card (performance.md's rules):

- dense attention at N = 1k, 4k, 16k, d = 64 and 128, causal and not:
  ``fused_attention`` (float32 and float16), ``naive_cupy`` (the package's
  ``scaled_dot_product_attention`` on CuPy arrays: cuBLAS matmuls and an
  elementwise softmax; N <= 4k, its (N, N) scores fill the card beyond),
  torch SDPA with the flash, cuDNN and memory-efficient backends (float16);
- sliding window w = 256 (d = 64): ``fused_attention(..., window=256)`` (the
  kernels' native window: no layout, no host work per call), the same window
  through ``block_sparse_fused_attention`` (a layout and its tile lists, a
  second record under that name), and FlexAttention with a sliding-window
  block mask (compiled; N >= 4k), each end to end and kernel only;
- the backward pass alone (float16, N = 4k and 16k): ``fused_attention_backward``
  where ``attn_course.kernels`` has one, and torch's flash backward
  (``torch_sdpa_flash_backward``), the forward run once beforehand;
- peak memory of each call from the CuPy pool or torch's allocator.

Every implementation is timed two ways, each in 3 rounds of the median of 10
calls (after 3 warm-up calls), and the record keeps the three round medians:

- ``ms``, end to end: CUDA events around the public call as a user makes it,
  the GPU idle at the start, so the host's work (argument checks, layout work,
  the finite check's read-back, torch's dispatch) counts;
- ``kernel_ms``, the device work alone: the same work with its inputs prepared
  beforehand (ours with ``check_finite=False``), queued behind a short
  busy-wait kernel, so that the host has finished launching before the start
  event is reached and the events bracket only the kernels.

FLOPs are counted as 4 B H N^2 d (causal: half), the backward pass as 2.5 times
its forward (five matrix products instead of two); sparse patterns are compared
by time. Every implementation is first checked against a float64 reference
(the forward on sampled query rows, the backward's dq, dk, dv against float32
autograd), the relative error stored with the record.

It writes ``<card>.json`` (a list of records: impl, dtype, B, H, N, d, causal,
window, direction, ms, kernel_ms, their rounds and spread, tflops, device,
versions, commit, date, rel_error, peak_mib), ``<card>_goals.json`` (each goal
of issue 17 and performance.md with its measured ratio, the records it came from
and met or not) and ``<card>.png`` under ``--out`` (default ``benchmarks/results``).
``load_results`` and ``plot_results`` let lesson 15 show stored results on a
machine without a GPU. The timing (``time_rounds``), the record
(``build_record``), ``measure`` and ``goals`` take their clock and their
implementations as arguments, so tests run them with fakes on any machine.
"""

from __future__ import annotations

import datetime
import importlib
import json
import math
import os
import platform
import re
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_OUT = Path("benchmarks/results")  # where a run writes, from the repository root
RESULTS_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "results"  # the stored results, from anywhere
REPOSITORY = Path(__file__).resolve().parents[2]
WINDOW = 256
SIZES = (1024, 4096, 16384)
QUICK_SIZES = (1024,)
HEAD_DIMS = (64, 128)
HEADS = 16
TOKENS = 16384  # B * N: the batch shrinks as N grows, so every size fills the card
NAIVE_MAX_N = 4096
FLEX_MIN_N = 4096  # FlexAttention compiles once per size (tens of seconds): the long sequences only
BACKWARD_SIZES = (4096, 16384)  # where the backward goal is read
WARMUP, REPEATS, ROUNDS = 3, 10, 3
BUSY_WAIT_MS = (0.5, 5.0)  # the busy-wait before a kernel-only call: at least, at most
BACKWARD_FLOP_FACTOR = 2.5  # backward: 5 matrix products of 2 N^2 d each, against the forward's 2
CHECKED_ROWS = 128  # query rows compared with the float64 reference

# the error each dtype may show against float64 (performance.md: fp32 <= 1e-5 ... relative, fp16 <= 1e-2)
MAX_REL_ERROR = {"float32": 1e-5, "float16": 1e-2}


def attention_flops(B: int, H: int, N: int, d: int, causal: bool) -> float:
    """4 B H N^2 d (two matrix products of 2 N^2 d each, per head); causal: half."""
    flops = 4.0 * B * H * N * N * d
    return flops / 2 if causal else flops


def card_slug(name: str) -> str:
    """A file name for a card: "NVIDIA H200" -> "nvidia-h200"."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


# --------------------------------------------------------------------------- timing (any clock)


def time_rounds(
    fn,
    timer,
    *,
    hide_host: bool = False,
    warmup: int = WARMUP,
    repeats: int = REPEATS,
    rounds: int = ROUNDS,
    host_clock=time.perf_counter,
) -> dict:
    """``rounds`` medians of ``repeats`` calls of ``fn()`` each, timed by ``timer``'s events, after ``warmup`` calls.

    ``timer`` offers ``event()`` (an object with ``record()``, ``synchronize()`` and
    ``elapsed_from(start)`` in ms), ``synchronize()`` and ``busy_wait(ms)``. With
    ``hide_host``, each timed call is queued behind ``busy_wait``: the device is kept
    busy for about twice the host's time for one call (measured on ``host_clock``,
    within ``BUSY_WAIT_MS``), so the events bracket the device work alone.
    Returns ``{"rounds": [ms, ...], "busy_wait_ms": ms or None}``.
    """
    for _ in range(warmup):
        fn()
    timer.synchronize()
    busy_ms = None
    if hide_host:
        started = host_clock()
        fn()  # returns once its work is queued (unless it waits for the device itself)
        host_ms = (host_clock() - started) * 1e3
        timer.synchronize()
        busy_ms = min(max(2 * host_ms + 0.2, BUSY_WAIT_MS[0]), BUSY_WAIT_MS[1])
    medians = []
    for _ in range(rounds):
        times = []
        for _ in range(repeats):
            start, end = timer.event(), timer.event()
            if hide_host:
                timer.busy_wait(busy_ms)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(end.elapsed_from(start))
        medians.append(statistics.median(times))
    return {"rounds": medians, "busy_wait_ms": busy_ms}


def spread(rounds: list[float] | None, prefix: str) -> dict:
    """``{prefix: median, prefix_min, prefix_max, prefix_repeats, prefix_spread}`` of round medians (None if none)."""
    if not rounds:
        return {prefix: None, f"{prefix}_min": None, f"{prefix}_max": None, f"{prefix}_repeats": None}
    middle = statistics.median(rounds)
    return {
        prefix: middle,
        f"{prefix}_min": min(rounds),
        f"{prefix}_max": max(rounds),
        f"{prefix}_repeats": list(rounds),
        f"{prefix}_spread": (max(rounds) - min(rounds)) / middle if middle > 0 else None,
    }


# --------------------------------------------------------------------------- records (pure)


def build_record(
    *,
    impl: str,
    dtype: str,
    B: int,
    H: int,
    N: int,
    d: int,
    causal: bool,
    window: int | None,
    direction: str = "forward",
    ms_rounds: list[float] | None = None,
    kernel_rounds: list[float] | None = None,
    busy_wait_ms: float | None = None,
    rel_error: float | None = None,
    peak_mib: float | None = None,
    first_call_s: float | None = None,
    error: str | None = None,
    device: str,
    versions: dict,
    commit: str | None,
    date: str,
) -> dict:
    """One benchmark record (performance.md's fields and more) from what was measured; no GPU, no clock."""
    record = {"impl": impl, "dtype": dtype, "B": B, "H": H, "N": N, "d": d, "causal": causal, "window": window}
    record["direction"] = direction
    record.update(spread(ms_rounds, "ms"))
    record.update(spread(kernel_rounds, "kernel_ms"))
    flops = attention_flops(B, H, N, d, causal) * (BACKWARD_FLOP_FACTOR if direction == "backward" else 1.0)
    for field, rate in (("ms", "tflops"), ("kernel_ms", "kernel_tflops")):
        ms = record[field]
        record[rate] = flops / (ms * 1e-3) / 1e12 if window is None and ms else None
    record.update(device=device, versions=versions, commit=commit, date=date)
    record.update(rel_error=rel_error, peak_mib=peak_mib, first_call_s=first_call_s, busy_wait_ms=busy_wait_ms)
    record["error"] = error
    return record


@dataclass
class Implementation:
    """One thing to time at one size: its public call, its device work alone, and how to check its result."""

    impl: str
    dtype: str
    call: Callable[[], Any]  # end to end: the public call as a user makes it
    kernel: Callable[[], Any]  # the same device work, inputs prepared, host work hidden by the timer
    timer: Any  # event(), synchronize(), busy_wait(ms)
    rel_error: Callable[[Any], float]  # relative error of call()'s result against float64
    causal: bool = False
    window: int | None = None
    direction: str = "forward"
    peak_mib: Callable[[Callable], float] | None = None  # MiB one call adds to the allocator


def measure(implementation: Implementation, shape: dict, *, device, versions, commit, log=print, **timing) -> dict:
    """Check ``implementation`` against its reference, time it both ways, and return its record.

    ``shape``: ``{"B", "H", "N", "d"}``. ``timing``: ``warmup``, ``repeats``, ``rounds``,
    ``host_clock`` for ``time_rounds``. A failure (a backend without a kernel for this
    shape, a wrong result) is stored in the record's ``error``; it never stops the run.
    """
    it = implementation
    found: dict = {}
    error = None
    host_clock = timing.get("host_clock", time.perf_counter)
    try:
        started = host_clock()
        out = it.call()  # first call: compilation, autotuning; also the correctness check
        found["first_call_s"] = round(host_clock() - started, 3)
        found["rel_error"] = rel_error = it.rel_error(out)
        del out
        if not rel_error <= MAX_REL_ERROR[it.dtype]:
            error = f"relative error {rel_error:.2e} above {MAX_REL_ERROR[it.dtype]:.0e}"
        found["ms_rounds"] = time_rounds(it.call, it.timer, **timing)["rounds"]
        kernel = time_rounds(it.kernel, it.timer, hide_host=True, **timing)
        found["kernel_rounds"], found["busy_wait_ms"] = kernel["rounds"], kernel["busy_wait_ms"]
        if it.peak_mib is not None:
            found["peak_mib"] = it.peak_mib(it.call)
    except Exception as err:  # one failing backend (e.g. no cuDNN kernel for a shape) must not stop the run
        error = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
    record = build_record(
        impl=it.impl,
        dtype=it.dtype,
        **shape,
        causal=it.causal,
        window=it.window,
        direction=it.direction,
        **found,
        error=error,
        device=device,
        versions=versions,
        commit=commit,
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    log(_format_record(record))
    return record


def _format_record(r: dict) -> str:
    def number(x, width, digits):
        return f"{x:{width}.{digits}f}" if x is not None else " " * (width - 1) + "-"

    spread_pct = f"{100 * r['ms_spread']:.0f}%" if r.get("ms_spread") is not None else "-"
    err = f"{r['rel_error']:.1e}" if r["rel_error"] is not None else "-"
    shape = f"B{r['B']} H{r['H']} N{r['N']:>5} d{r['d']:>3}"
    mode = ("causal" if r["causal"] else "full") + (f" w={r['window']}" if r["window"] else "")
    line = f"{r['impl']:<28} {r['dtype']:<7} {shape:<22} {mode:<11} {number(r['ms'], 9, 3)} ms (+-{spread_pct:>3})"
    line += f" kernel {number(r.get('kernel_ms'), 9, 3)} ms {number(r['tflops'], 7, 1)} TFLOP/s"
    line += f" err {err:<7} mem {number(r['peak_mib'], 9, 1)} MiB"
    return line + (f"  FAILED: {r['error']}" if r["error"] else "")


# --------------------------------------------------------------------------- the GPU side (needs CuPy and torch)

_BUSY_WAIT_SOURCE = r"""
extern "C" __global__ void busy_wait(unsigned long long nanoseconds) {
    unsigned long long start, now;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
    do {
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
    } while (now - start < nanoseconds);
}
"""


class _CudaTimer:
    """CUDA events of CuPy or torch on the current stream, and a one-thread kernel that keeps the GPU busy."""

    def __init__(self, library: str):
        self.library = library
        self._kernel = None

    def event(self):
        return _CupyEvent() if self.library == "cupy" else _TorchEvent()

    def synchronize(self):
        import cupy

        cupy.cuda.Device().synchronize()

    def busy_wait(self, ms: float):
        import cupy

        if self._kernel is None:
            self._kernel = cupy.RawKernel(_BUSY_WAIT_SOURCE, "busy_wait")
        args = (np.uint64(ms * 1e6),)
        stream = 0
        if self.library == "torch":  # torch's current stream, where its events and kernels go
            import torch

            stream = torch.cuda.current_stream().cuda_stream
        if stream == 0:  # the default stream, which is also CuPy's unless a caller changed it
            self._kernel((1,), (1,), args)
        else:
            with cupy.cuda.ExternalStream(stream):
                self._kernel((1,), (1,), args)


def time_cupy(fn, warmup: int = WARMUP, repeats: int = REPEATS) -> float:
    """Median milliseconds of ``fn()`` (CuPy work on the current stream), between CUDA events: one round of
    :func:`time_rounds`."""
    return time_rounds(fn, _CudaTimer("cupy"), warmup=warmup, repeats=repeats, rounds=1)["rounds"][0]


class _CupyEvent:
    def __init__(self):
        import cupy

        self._event = cupy.cuda.Event()

    def record(self):
        self._event.record()

    def synchronize(self):
        self._event.synchronize()

    def elapsed_from(self, start) -> float:
        import cupy

        return cupy.cuda.get_elapsed_time(start._event, self._event)


class _TorchEvent:
    def __init__(self):
        import torch

        self._event = torch.cuda.Event(enable_timing=True)

    def record(self):
        self._event.record()

    def synchronize(self):
        self._event.synchronize()

    def elapsed_from(self, start) -> float:
        return start._event.elapsed_time(self._event)


def _reference_rows(q, k, v, rows, causal: bool, window: int | None):
    """float64 attention for the query ``rows`` only (torch on the GPU): (B, H, len(rows), d)."""
    import torch

    q64, k64, v64 = (x.double() for x in (q, k, v))
    scores = q64[:, :, rows] @ k64.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, H, R, N)
    i = torch.as_tensor(rows, device=q.device)[:, None]
    j = torch.arange(k.shape[-2], device=q.device)[None, :]
    allowed = torch.ones_like(scores[0, 0], dtype=torch.bool)
    if causal:
        allowed &= j <= i
    if window is not None:
        allowed &= (i - j).abs() <= window
    scores = scores.masked_fill(~allowed, -math.inf)
    return torch.softmax(scores, dim=-1) @ v64


def _as_torch(x):
    import torch

    return x if isinstance(x, torch.Tensor) else torch.from_dlpack(x)  # a CuPy array, without a copy


def _relative_error(out, reference, rows) -> float:
    import torch

    got = _as_torch(out)[:, :, rows].double()
    return float(torch.linalg.vector_norm(got - reference) / torch.linalg.vector_norm(reference))


def _gradient_error(grads, reference) -> float:
    """The largest relative error of (dq, dk, dv) against the reference gradients."""
    import torch

    errors = []
    for grad, wanted in zip(grads, reference, strict=True):
        got, want = _as_torch(grad).double(), wanted.double()
        errors.append(float(torch.linalg.vector_norm(got - want) / torch.linalg.vector_norm(want)))
    return max(errors)


def _peak_cupy_mib(fn) -> float:
    """MiB the CuPy pool had to add for one call (the inputs already exist)."""
    import cupy

    cupy.cuda.Device().synchronize()
    pool = cupy.get_default_memory_pool()
    pool.free_all_blocks()
    before = pool.total_bytes()
    fn()
    cupy.cuda.Device().synchronize()
    return (pool.total_bytes() - before) / 2**20


def _peak_torch_mib(fn) -> float:
    import torch

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def _version_of(read) -> Any:
    try:
        return read()
    except Exception:  # a library missing or without that query: None in the record
        return None


def _versions() -> dict:
    import cupy
    import torch

    def triton_version():
        return importlib.import_module("triton").__version__

    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "cupy": cupy.__version__,
        "torch": torch.__version__,
        "cuda_runtime": _version_of(cupy.cuda.runtime.runtimeGetVersion),
        "cuda_driver": _version_of(cupy.cuda.runtime.driverGetVersion),
        "nvrtc": _version_of(lambda: ".".join(map(str, cupy.cuda.nvrtc.getVersion()))),
        "torch_cuda": _version_of(lambda: torch.version.cuda),
        "cudnn": _version_of(torch.backends.cudnn.version),
        "triton": _version_of(triton_version),
    }


def git_commit() -> str | None:
    """The checked-out commit (``+dirty`` when tracked files differ), or None if unknown.

    ``ATTN_COURSE_COMMIT`` overrides it (a copy of the tree without ``.git``, say).
    """
    if os.environ.get("ATTN_COURSE_COMMIT"):
        return os.environ["ATTN_COURSE_COMMIT"]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPOSITORY, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPOSITORY,
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if changed else "") if head else None


def _torch_sdpa(backend_name: str):
    """A function (q, k, v, causal) -> out running torch SDPA on one named backend only."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {
        "torch_sdpa_flash": SDPBackend.FLASH_ATTENTION,
        "torch_sdpa_cudnn": SDPBackend.CUDNN_ATTENTION,
        "torch_sdpa_efficient": SDPBackend.EFFICIENT_ATTENTION,
    }[backend_name]

    def run(q, k, v, causal):
        with sdpa_kernel([backend]):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    return run


def _flex_sliding_window(N: int, window: int):
    """FlexAttention (compiled on first call) with a sliding-window block mask, as a function fn(q, k, v)."""
    import torch
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    def sliding(b, h, q_idx, kv_idx):
        return (q_idx - kv_idx).abs() <= window

    block_mask = create_block_mask(sliding, B=None, H=None, Q_LEN=N, KV_LEN=N, device="cuda")
    compiled = torch.compile(flex_attention, dynamic=False)
    return lambda q, k, v: compiled(q, k, v, block_mask=block_mask)


class _Runner:
    """Holds the inputs of one size and builds the implementations to time on them."""

    def __init__(self, B, H, N, d):
        import cupy
        import torch

        self.B, self.H, self.N, self.d = B, H, N, d
        rng = cupy.random.default_rng(N * 7 + d)
        base = [rng.standard_normal((B, H, N, d), dtype=cupy.float32) for _ in range(3)]
        self.cupy_inputs = {"float32": base, "float16": [x.astype(cupy.float16) for x in base]}
        self.torch_inputs = {name: [torch.from_dlpack(x) for x in xs] for name, xs in self.cupy_inputs.items()}
        self.rows = np.unique(np.linspace(0, N - 1, CHECKED_ROWS).astype(int))
        self._references = {}
        self.cupy_timer, self.torch_timer = _CudaTimer("cupy"), _CudaTimer("torch")

    @property
    def shape(self) -> dict:
        return {"B": self.B, "H": self.H, "N": self.N, "d": self.d}

    def forward_error(self, causal, window):
        key = (causal, window)
        if key not in self._references:
            self._references[key] = _reference_rows(*self.torch_inputs["float32"], self.rows, causal, window)
        return partial(_relative_error, reference=self._references[key], rows=self.rows)

    def dense(self, causal: bool) -> list[Implementation]:
        """Ours (fp32, fp16), naive CuPy (N <= 4k) and torch's three SDPA backends (fp16), one causality."""
        from .. import scaled_dot_product_attention
        from ..kernels import fused_attention

        error, found = self.forward_error(causal, None), []
        for dtype in ("float32", "float16"):
            q, k, v = self.cupy_inputs[dtype]
            call = partial(fused_attention, q, k, v, is_causal=causal)
            kernel = partial(fused_attention, q, k, v, is_causal=causal, check_finite=False)
            found.append(self._cupy("fused_attention", dtype, call, kernel, error, causal))
            if self.N <= NAIVE_MAX_N:
                naive = partial(scaled_dot_product_attention, q, k, v, is_causal=causal)
                found.append(self._cupy("naive_cupy", dtype, naive, naive, error, causal))
        tq16 = self.torch_inputs["float16"]
        for impl in ("torch_sdpa_flash", "torch_sdpa_cudnn", "torch_sdpa_efficient"):
            sdpa = _torch_sdpa(impl)
            # The same call both ways: kernel-only hides its host work (the backend choice, torch's
            # dispatch) behind the busy-wait, so the events see the attention kernel alone.
            call = partial(sdpa, *tq16, causal)
            found.append(self._torch(impl, "float16", call, call, error, causal))
        return found

    def windowed(self, log) -> list[Implementation]:
        """Ours (fp32, fp16: the native window, and block-sparse) and FlexAttention (fp16, N >= 4k), window WINDOW."""
        from ..kernels import block_sparse_fused_attention, fused_attention
        from ..masks import block_layout, sliding_window

        window = sliding_window(WINDOW)
        layout = block_layout(window, 64, self.N, self.N)
        error, found = self.forward_error(False, WINDOW), []
        for dtype in ("float32", "float16"):
            q, k, v = self.cupy_inputs[dtype]
            call = partial(fused_attention, q, k, v, window=WINDOW)
            kernel = partial(fused_attention, q, k, v, window=WINDOW, check_finite=False)
            found.append(self._cupy("fused_attention", dtype, call, kernel, error, False, WINDOW))
            call = partial(block_sparse_fused_attention, q, k, v, layout, 64, window)
            kernel = partial(block_sparse_fused_attention, q, k, v, layout, 64, window, check_finite=False)
            found.append(self._cupy("block_sparse_fused_attention", dtype, call, kernel, error, False, WINDOW))
        if self.N < FLEX_MIN_N:
            return found
        try:  # FlexAttention is compiled (Triton) once per size; its block mask is made once, as a user would
            flex = partial(_flex_sliding_window(self.N, WINDOW), *self.torch_inputs["float16"])
        except Exception as err:
            log(f"flex_attention could not be set up: {type(err).__name__}: {err}")
            return found
        found.append(self._torch("flex_attention", "float16", flex, flex, error, False, WINDOW))
        return found

    def backward(self, causal: bool) -> list[Implementation]:
        """The backward pass alone (fp16): torch's flash backward and ours, each timed without its forward."""
        import torch
        import torch.nn.functional as F
        from torch.nn.attention import SDPBackend, sdpa_kernel

        q, k, v = (x.detach().clone().requires_grad_(True) for x in self.torch_inputs["float16"])
        dout = torch.randn_like(q)  # (B, H, N, d)
        q32, k32, v32 = (x.detach().float().requires_grad_(True) for x in (q, k, v))
        with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]):
            out32 = F.scaled_dot_product_attention(q32, k32, v32, is_causal=causal)
        reference = torch.autograd.grad(out32, (q32, k32, v32), dout.float())
        del out32, q32, k32, v32
        error = partial(_gradient_error, reference=reference)
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)

        def torch_backward():  # the forward's graph is kept: each call runs the backward alone
            return torch.autograd.grad(out, (q, k, v), dout, retain_graph=True)

        found = [self._torch("torch_sdpa_flash_backward", "float16", torch_backward, torch_backward, error, causal)]
        found[-1].direction = "backward"
        from ..autograd import as_cupy
        from ..kernels import fused_attention, fused_attention_backward

        cq, ck, cv = self.cupy_inputs["float16"]
        fwd_out, lse = fused_attention(cq, ck, cv, is_causal=causal, return_lse=True)
        call = partial(fused_attention_backward, cq, ck, cv, fwd_out, lse, as_cupy(dout), is_causal=causal)
        found.append(self._cupy("fused_attention_backward", "float16", call, call, error, causal))
        found[-1].direction = "backward"
        return found

    def _cupy(self, impl, dtype, call, kernel, error, causal, window=None) -> Implementation:
        return Implementation(
            impl, dtype, call, kernel, self.cupy_timer, error, causal, window, "forward", _peak_cupy_mib
        )

    def _torch(self, impl, dtype, call, kernel, error, causal, window=None) -> Implementation:
        return Implementation(
            impl, dtype, call, kernel, self.torch_timer, error, causal, window, "forward", _peak_torch_mib
        )


def measure_all(quick: bool = False, log=print, checkpoint=None) -> list[dict]:
    """Every record of the suite (needs CuPy on a usable GPU, and torch with CUDA).

    ``checkpoint(records)``, if given, is called after each size with the records so far
    (``run`` writes the files then, so a run stopped at its time limit leaves what it measured).
    """
    import cupy
    import torch

    props = cupy.cuda.runtime.getDeviceProperties(0)
    device = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    versions, commit = _versions(), git_commit()
    log(f"device: {device}; commit {commit}; " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    context = {"device": device, "versions": versions, "commit": commit, "log": log}
    records = []
    for N in QUICK_SIZES if quick else SIZES:
        for d in HEAD_DIMS[:1] if quick else HEAD_DIMS:
            run = _Runner(max(1, TOKENS // N), HEADS, N, d)
            implementations = run.dense(False) + run.dense(True)
            if d == 64:
                implementations += run.windowed(log)
            if quick or N in BACKWARD_SIZES:
                for causal in (False, True):
                    try:
                        implementations += run.backward(causal)
                    except Exception as err:  # the reference or the forward failed: the rest still runs
                        log(f"backward at N={N} d={d} could not be set up: {type(err).__name__}: {err}")
            for implementation in implementations:
                records.append(measure(implementation, run.shape, **context))
            if checkpoint is not None:
                checkpoint(records)
            del run, implementations  # free this size's inputs before the next
            cupy.get_default_memory_pool().free_all_blocks()
            torch.cuda.empty_cache()
    return records


# --------------------------------------------------------------------------- goals, files, pictures (no GPU needed)


def _find(records, field="ms", **fields):
    """The first record matching ``fields`` that measured ``field`` without an error (and its index)."""
    for index, r in enumerate(records):
        if r.get("direction", "forward") != fields.get("direction", "forward"):
            continue
        if all(r.get(k) == v for k, v in fields.items() if k != "direction") and r.get(field) is not None:
            if not r.get("error"):
                return index, r
    return None, None


def _goal(name, value, relation, bound, unit, *, used=(), stretch=False, source="performance.md"):
    met = None if value is None else (value >= bound if relation == ">=" else value <= bound)
    entry = {"goal": name, "value": value, "relation": relation, "bound": bound, "unit": unit, "met": met}
    entry.update(stretch=stretch, source=source, records=list(used))
    return entry


def _used(index, record, field) -> dict:
    """What a goal cites of a record: its place in ``<card>.json``, what identifies it, and the figure read."""
    keys = ("impl", "dtype", "B", "H", "N", "d", "causal", "window", "direction")
    return {
        "index": index,
        **{k: record.get(k, "forward" if k == "direction" else None) for k in keys},
        field: record[field],
    }


def _ratio_goal(records, name, baseline, ours, field, bound, **options) -> dict:
    """baseline time / our time (> 1: ours is faster) from the two records matching ``baseline`` and ``ours``."""
    i, base = _find(records, field, **baseline)
    j, mine = _find(records, field, **ours)
    value = base[field] / mine[field] if base and mine else None
    used = [_used(i, base, field)] if base else []
    used += [_used(j, mine, field)] if mine else []
    return _goal(name, value, ">=", bound, "ratio", used=used, source="issue 17", **options)


MEASURES = {"kernel_ms": "kernel only", "ms": "end to end"}
GOAL_SIZES = (4096, 16384)


def _window_goals(records: list[dict], N: int) -> list[dict]:
    """Issue 17's window goal: FlexAttention's time over ours (the native window), end to end (the goal) and
    kernel only (where the time goes), at window WINDOW, d = 64, not causal."""
    window = {"N": N, "d": 64, "causal": False, "window": WINDOW, "dtype": "float16"}
    return [
        _ratio_goal(
            records,
            f"window: flex_attention / fused_attention(window={WINDOW}) fp16 time, d=64 N={N} full, {how}",
            {**window, "impl": "flex_attention"},
            {**window, "impl": "fused_attention"},
            field,
            1.2,
        )
        for field, how in MEASURES.items()
    ]


def goals(records: list[dict]) -> list[dict]:
    """performance.md's and issue 17's GPU goals, each with its measured value, its records and met (None: missing)."""
    N_dense, N_window = 4096, 16384
    dense = {"d": 64, "causal": False, "window": None}  # fused_attention has windowed records too
    i32, fp32 = _find(records, impl="fused_attention", dtype="float32", N=N_dense, **dense)
    i16, fp16 = _find(records, impl="fused_attention", dtype="float16", N=N_dense, **dense)
    iflash, flash = _find(records, impl="torch_sdpa_flash", N=N_dense, **dense)
    isparse, sparse = _find(records, impl="block_sparse_fused_attention", dtype="float16", N=N_window, d=64)
    ilong, flash_long = _find(records, impl="torch_sdpa_flash", N=N_window, **dense)
    fused_long = [
        r
        for r in records
        if r["impl"] in ("fused_attention", "block_sparse_fused_attention")
        and r["N"] == N_window
        and r.get("direction", "forward") == "forward"
    ]

    # Memory: what our kernels add to the pool beyond their output, against one (N, N) score array.
    extra_mib, square_mib = None, None
    for r in fused_long:
        if r.get("peak_mib") is None:
            continue
        output_mib = r["B"] * r["H"] * r["N"] * r["d"] * (4 if r["dtype"] == "float32" else 2) / 2**20
        beyond_output = max(0.0, r["peak_mib"] - output_mib)
        if extra_mib is None or beyond_output > extra_mib:
            extra_mib = beyond_output
            square_mib = r["B"] * r["H"] * r["N"] ** 2 * (4 if r["dtype"] == "float32" else 2) / 2**20

    def cite(*pairs, field="ms"):
        return [_used(i, r, field) for i, r in pairs if r is not None]

    found = [
        _goal(
            "fused_attention fp32, N=4096 d=64", fp32 and fp32["tflops"], ">=", 25.0, "TFLOP/s", used=cite((i32, fp32))
        ),
        _goal(
            "fused_attention fp16 / torch SDPA flash throughput, N=4096 d=64",
            fp16 and flash and fp16["tflops"] / flash["tflops"],
            ">=",
            1 / 3,
            "ratio",
            used=cite((i16, fp16), (iflash, flash)),
        ),
        _goal(
            f"torch flash dense / block_sparse_fused_attention fp16, window {WINDOW}, N={N_window} d=64 (time)",
            sparse and flash_long and flash_long["ms"] / sparse["ms"],
            ">=",
            10.0,
            "ratio",
            used=cite((isparse, sparse), (ilong, flash_long)),
        ),
        _goal(
            f"pool memory our kernels take beyond their output at N={N_window} / the (N, N) scores it would need",
            None if extra_mib is None else extra_mib / square_mib,
            "<=",
            0.01,
            "ratio",
        ),
        _goal(
            "fused_attention fp32, N=4096 d=64 (raised goal)",
            fp32 and fp32["tflops"],
            ">=",
            40.0,
            "TFLOP/s",
            used=cite((i32, fp32)),
        ),
    ]
    for d in HEAD_DIMS:
        for N in GOAL_SIZES:
            for causal in (False, True):
                for field, how in MEASURES.items():
                    mode = "causal" if causal else "full"
                    ours = {"impl": "fused_attention", "dtype": "float16", "N": N, "d": d, "causal": causal}
                    ours["window"] = None
                    flash = {"impl": "torch_sdpa_flash", "N": N, "d": d, "causal": causal, "window": None}
                    found.append(
                        _ratio_goal(
                            records,
                            f"parity: torch flash / fused_attention fp16 time, d={d} N={N} {mode}, {how}",
                            flash,
                            ours,
                            field,
                            1.0,
                        )
                    )
                    if d == 128:
                        found.append(
                            _ratio_goal(
                                records,
                                f"stretch: torch cuDNN / fused_attention fp16 time, d={d} N={N} {mode}, {how}",
                                {**flash, "impl": "torch_sdpa_cudnn"},
                                ours,
                                field,
                                0.75,
                                stretch=True,
                            )
                        )
    found += _window_goals(records, N_window)
    for d in HEAD_DIMS:
        for N in GOAL_SIZES:
            for causal in (False, True):
                for field, how in MEASURES.items():
                    mode = "causal" if causal else "full"
                    where = {"N": N, "d": d, "causal": causal, "direction": "backward", "dtype": "float16"}
                    entry = _ratio_goal(
                        records,
                        f"backward: torch flash backward / fused_attention_backward fp16 time, d={d} N={N} {mode}, "
                        f"{how}",
                        {**where, "impl": "torch_sdpa_flash_backward"},
                        {**where, "impl": "fused_attention_backward"},
                        field,
                        0.6,
                    )
                    found.append(entry)
    return found


def format_goals(goal_list: list[dict]) -> list[str]:
    """One line per goal: its value, its bound, met or not (goals files of earlier runs read the same)."""
    lines = []
    for g in goal_list:
        value = "not measured" if g["value"] is None else f"{g['value']:.3g} {g['unit']}"
        verdict = "not measured" if g["met"] is None else ("met" if g["met"] else "NOT met")
        lines.append(f"{g['goal']}: {value} (goal {g['relation']} {g['bound']:.3g}) {verdict}")
    return lines


def format_summary(goal_list: list[dict]) -> list[str]:
    """A short table: each family of ratio goals as one line per (d, measure), the figures for N x causality."""
    lines, grids = [], {}
    for g in goal_list:
        match = re.match(r"(\w+): (.*), d=(\d+) N=(\d+) (full|causal), (kernel only|end to end)$", g["goal"])
        if not match:
            mark = "-" if g["met"] is None else ("ok" if g["met"] else "NO")
            value = "n/a" if g["value"] is None else f"{g['value']:.3g}"
            lines.append(f"  {mark:<3} {value:>7} {g['unit']:<8} {g['relation']} {g['bound']:.3g}  {g['goal']}")
            continue
        family, what, d, N, mode, how = match.groups()
        key = (family, what, g["bound"])
        grids.setdefault(key, {}).setdefault((int(d), how), {})[(int(N), mode)] = g
    for (family, what, bound), rows in grids.items():
        columns = sorted({column for row in rows.values() for column in row}, key=lambda c: (c[0], c[1] != "full"))
        header = " ".join(f"{f'N={N} {mode}':>14}" for N, mode in columns)
        lines.append(f"{family}: {what} (goal >= {bound:g}x)")
        lines.append(f"  {'':<20} {header}")
        for (d, how), row in sorted(rows.items()):
            cells = []
            for column in columns:
                g = row.get(column)
                if g is None or g["value"] is None:
                    cells.append(f"{'n/a':>14}")
                else:
                    cells.append(f"{g['value']:>11.2f} {'ok' if g['met'] else 'NO':<2}")
            lines.append(f"  {f'd={d} {how}':<20} {' '.join(cells)}")
    return lines


def write_results(records: list[dict], goal_list: list[dict], out: Path | str) -> tuple[Path, Path]:
    """``<card>.json`` (the records) and ``<card>_goals.json`` under ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    slug = card_slug(records[0]["device"])
    results = out / f"{slug}.json"
    results.write_text(json.dumps(records, indent=1) + "\n")
    goals_path = out / f"{slug}_goals.json"
    goals_path.write_text(json.dumps(goal_list, indent=1) + "\n")
    return results, goals_path


def load_results(path: Path | str | None = None) -> list[dict]:
    """The stored records of one card (default: the first ``<card>.json`` of the repository's results)."""
    if path is None:
        candidates = sorted(p for p in RESULTS_DIR.glob("*.json") if not p.name.endswith("_goals.json"))
        if not candidates:
            raise FileNotFoundError(f"no GPU results stored in {RESULTS_DIR} (run python -m attn_course.bench gpu)")
        path = candidates[0]
    records = json.loads(Path(path).read_text())
    if not isinstance(records, list) or not records or "impl" not in records[0]:
        raise ValueError(f"{path} does not hold benchmark records (a list of dicts with 'impl', 'ms', ...)")
    return records


def print_summary(out: Path | str, log=print) -> int:
    """Print the goals file(s) under ``out`` as ``format_summary`` tables; 1 if there is none."""
    paths = sorted(Path(out).glob("*_goals.json"))
    if not paths:
        log(f"no goals file in {out}: the benchmark did not finish")
        return 1
    for path in paths:
        log(f"GPU goals from {path}:")
        for line in format_summary(json.loads(path.read_text())):
            log(line)
    return 0


def plot_results(records: list[dict], path: Path | str | None = None):
    """Two panels: TFLOP/s against N (d = 64, non-causal), and sliding-window time against N."""
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    first = records[0]
    versions = first["versions"]
    stamp = f"{first['device']}, {first['date'][:10]}, torch {versions.get('torch')}, CuPy {versions.get('cupy')}"
    styles = {"float32": "--", "float16": "-"}
    for (impl, dtype), points in _series(records, d=64, causal=False, window=None).items():
        left.plot(
            [p["N"] for p in points],
            [p["tflops"] for p in points],
            styles[dtype],
            marker="o",
            label=f"{impl} ({dtype})",
        )
    left.set_xscale("log", base=2)
    left.set_yscale("log")
    left.set_xlabel("sequence length N")
    left.set_ylabel("TFLOP/s (4 B H N² d / time)")
    left.set_title("dense attention, d = 64, not causal")
    left.legend(fontsize=7)
    window_series = _series(records, d=64, causal=False, window=WINDOW)
    for (impl, dtype), points in {
        **window_series,
        **_series(records, d=64, causal=False, window=None, impls=("torch_sdpa_flash",)),
    }.items():
        label = f"{impl} ({dtype})" + (f", window {WINDOW}" if points[0]["window"] else ", dense")
        right.plot([p["N"] for p in points], [p["ms"] for p in points], styles[dtype], marker="o", label=label)
    right.set_xscale("log", base=2)
    right.set_yscale("log")
    right.set_xlabel("sequence length N")
    right.set_ylabel("milliseconds per call")
    right.set_title(f"sliding window w = {WINDOW} against dense flash")
    right.legend(fontsize=7)
    fig.suptitle(f"GPU attention, measured on {stamp}", fontsize=10)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def _series(records, *, d, causal, window, impls=None) -> dict:
    """The forward records of one (d, causal, window), per (impl, dtype), sorted by N."""
    series = {}
    for r in records:
        if r["d"] != d or r["causal"] != causal or r["window"] != window or r["ms"] is None or r.get("error"):
            continue
        if r.get("direction", "forward") != "forward" or (impls is not None and r["impl"] not in impls):
            continue
        series.setdefault((r["impl"], r["dtype"]), []).append(r)
    return {key: sorted(points, key=lambda p: p["N"]) for key, points in sorted(series.items())}


def run(quick: bool = False, out: Path | str = DEFAULT_OUT, log=print) -> int:
    """Measure, print the goals, write the JSON files and the plot. Returns the exit status."""
    from ..backend import gpu_status

    usable, reason = gpu_status()
    if not usable:
        log(f"No usable GPU here ({reason}). The stored results of earlier runs are in {DEFAULT_OUT}/*.json.")
        return 2
    records = measure_all(quick=quick, log=log, checkpoint=lambda found: write_results(found, goals(found), out))
    goal_list = goals(records)
    log("")
    log(f"GPU goals ({records[0]['device']}):")
    for line in format_goals(goal_list):
        log("  " + line)
    results, goals_path = write_results(records, goal_list, out)
    png = Path(out) / f"{card_slug(records[0]['device'])}.png"
    plot_results(records, png)
    log(f"wrote {results}, {goals_path}, {png}")
    return 0
