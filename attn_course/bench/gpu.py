"""GPU benchmarks: our fused kernels against naive CuPy, torch SDPA and FlexAttention.

``python -m attn_course.bench gpu [--quick] [--out DIR]`` measures, in one
process on one card (performance.md's rules):

- dense attention at N = 1k, 4k, 16k, d = 64 and 128, causal and not:
  ``fused_attention`` (float32 and float16), ``naive_cupy`` (the package's
  ``scaled_dot_product_attention`` on CuPy arrays: cuBLAS matmuls and an
  elementwise softmax; N <= 4k, its (N, N) scores fill the card beyond),
  torch SDPA with the flash, cuDNN and memory-efficient backends (float16);
- sliding window w = 256 (d = 64): ``block_sparse_fused_attention`` and
  FlexAttention with a sliding-window block mask (compiled; N >= 4k);
- peak memory of each call from the CuPy pool or torch's allocator.

Timing: 3 warm-up calls (NVRTC compilation, cuBLAS handles, autotuning), then
the median of 10 calls, each between two CUDA events. FLOPs are counted as
4 B H N^2 d (causal: half); sparse patterns are compared by time. Every
implementation is first checked against a float64 reference on sampled query
rows (relative error stored with the record).

It writes ``<card>.json`` (a list of records: impl, dtype, B, H, N, d, causal,
window, ms, tflops, device, versions, date, plus rel_error and peak_mib),
``<card>_goals.json`` and ``<card>.png`` under ``--out``
(default ``benchmarks/results``). ``load_results`` and ``plot_results`` let
lesson 15 show stored results on a machine without a GPU.
"""

from __future__ import annotations

import datetime
import json
import math
import platform
import re
import statistics
import time
from functools import partial
from pathlib import Path

import numpy as np

DEFAULT_OUT = Path("benchmarks/results")  # where a run writes, from the repository root
RESULTS_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "results"  # the stored results, from anywhere
WINDOW = 256
SIZES = (1024, 4096, 16384)
QUICK_SIZES = (1024,)
HEAD_DIMS = (64, 128)
HEADS = 16
TOKENS = 16384  # B * N: the batch shrinks as N grows, so every size fills the card
NAIVE_MAX_N = 4096
FLEX_MIN_N = 4096  # FlexAttention compiles once per size (tens of seconds): the long sequences only
WARMUP, REPEATS = 3, 10
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


# --------------------------------------------------------------------------- measuring (GPU only)


def time_cuda(fn, events, synchronize, warmup: int = WARMUP, repeats: int = REPEATS) -> float:
    """Median milliseconds of ``fn()`` between two CUDA events, after ``warmup`` calls.

    ``events()`` makes a (start, end) pair with ``record()``; ``end`` must offer
    ``synchronize()`` and ``elapsed_from(start)`` (see ``_cupy_events``/``_torch_events``).
    """
    for _ in range(warmup):
        fn()
    synchronize()
    times = []
    for _ in range(repeats):
        start, end = events()
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(end.elapsed_from(start))
    return statistics.median(times)


def time_cupy(fn, warmup: int = WARMUP, repeats: int = REPEATS) -> float:
    """Median milliseconds of ``fn()`` (CuPy work on the current stream), between CUDA events."""
    import cupy

    return time_cuda(fn, lambda: (_CupyEvent(), _CupyEvent()), cupy.cuda.Device().synchronize, warmup, repeats)


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


def _relative_error(out, reference, rows) -> float:
    import torch

    if not isinstance(out, torch.Tensor):
        out = torch.from_dlpack(out)  # a CuPy array, without a copy
    got = out[:, :, rows].double()
    return float(torch.linalg.vector_norm(got - reference) / torch.linalg.vector_norm(reference))


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


def _versions() -> dict:
    import cupy
    import torch

    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "cupy": cupy.__version__,
        "torch": torch.__version__,
        "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
        "cuda_driver": cupy.cuda.runtime.driverGetVersion(),
    }


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
    """Holds the inputs of one size and measures implementations on them."""

    def __init__(self, B, H, N, d, device: str, versions: dict, log):
        import cupy
        import torch

        self.B, self.H, self.N, self.d = B, H, N, d
        self.device, self.versions, self.log = device, versions, log
        rng = cupy.random.default_rng(N * 7 + d)
        base = [rng.standard_normal((B, H, N, d), dtype=cupy.float32) for _ in range(3)]
        self.cupy_inputs = {"float32": base, "float16": [x.astype(cupy.float16) for x in base]}
        self.torch_inputs = {name: [torch.from_dlpack(x) for x in xs] for name, xs in self.cupy_inputs.items()}
        self.rows = np.unique(np.linspace(0, N - 1, CHECKED_ROWS).astype(int))
        self._references = {}

    def reference(self, causal, window):
        key = (causal, window)
        if key not in self._references:
            self._references[key] = _reference_rows(*self.torch_inputs["float32"], self.rows, causal, window)
        return self._references[key]

    def measure(self, impl, dtype, fn, library, causal=False, window=None, kernel=None) -> dict:
        """Check ``fn()`` against the reference, then time it (and ``kernel()``, the launch alone, if given)."""
        record = {
            "impl": impl,
            "dtype": dtype,
            "B": self.B,
            "H": self.H,
            "N": self.N,
            "d": self.d,
            "causal": causal,
            "window": window,
            "ms": None,
            "tflops": None,
            "device": self.device,
            "versions": self.versions,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "rel_error": None,
            "peak_mib": None,
            "error": None,
        }
        try:
            started = time.perf_counter()
            out = fn()  # first call: compilation, autotuning; also the correctness check
            record["first_call_s"] = round(time.perf_counter() - started, 3)
            error = _relative_error(out, self.reference(causal, window), self.rows)
            record["rel_error"] = error
            if not error <= MAX_REL_ERROR[dtype]:
                record["error"] = f"relative error {error:.2e} above {MAX_REL_ERROR[dtype]:.0e}"
            del out
            events = _CupyEvent if library == "cupy" else _TorchEvent
            if library == "cupy":
                import cupy

                sync = cupy.cuda.Device().synchronize
            else:
                import torch

                sync = torch.cuda.synchronize
            ms = time_cuda(fn, lambda: (events(), events()), sync)
            record["ms"] = ms
            if kernel is not None:  # the same work without the argument checks: what the checks cost
                record["kernel_ms"] = time_cuda(kernel, lambda: (events(), events()), sync)
            if window is None:
                record["tflops"] = attention_flops(self.B, self.H, self.N, self.d, causal) / (ms * 1e-3) / 1e12
            record["peak_mib"] = (_peak_cupy_mib if library == "cupy" else _peak_torch_mib)(fn)
        except Exception as err:  # one failing backend (e.g. no cuDNN kernel for a shape) must not stop the run
            record["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
        self.log(_format_record(record))
        return record


def _format_record(r: dict) -> str:
    ms = f"{r['ms']:9.3f}" if r["ms"] is not None else "        -"
    tf = f"{r['tflops']:7.1f}" if r["tflops"] is not None else "      -"
    err = f"{r['rel_error']:.1e}" if r["rel_error"] is not None else "-"
    mem = f"{r['peak_mib']:9.1f}" if r["peak_mib"] is not None else "        -"
    shape = f"B{r['B']} H{r['H']} N{r['N']:>5} d{r['d']:>3}"
    mode = ("causal" if r["causal"] else "full") + (f" w={r['window']}" if r["window"] else "")
    kernel = f" (launch alone {r['kernel_ms']:.3f})" if r.get("kernel_ms") is not None else ""
    line = f"{r['impl']:<28} {r['dtype']:<7} {shape:<22} {mode:<11} {ms} ms{kernel} {tf} TFLOP/s"
    line += f" err {err:<7} mem {mem} MiB"
    return line + (f"  FAILED: {r['error']}" if r["error"] else "")


def _kernel_launch(q, k, v, *, is_causal=False, layout=None, mask=None):
    """The fused kernel's launch alone on already checked inputs (what the public function adds is checks)."""
    import cupy

    from ..kernels import fused

    q3, k3, v3, _, L, S, d, dtype_name = fused._prepare("benchmark", q, k, v)
    scale = 1.0 / math.sqrt(d)
    if layout is None:
        lo, hi = (0, L) if is_causal else (-S, L)
        tiles = None
    else:
        lo, hi = fused._offset_range(mask, L, S)
        tiles = fused._tile_lists(np.packbits(layout).tobytes(), layout.shape, 64, L, S, lo, hi, cupy.cuda.Device().id)
    return partial(fused._launch, q3, k3, v3, L, S, d, dtype_name, scale, lo, hi, tiles=tiles)


def _measure_size(run: _Runner, with_window: bool) -> list[dict]:
    """The records of one (N, d): dense implementations causal and not, then the sliding window."""
    from .. import scaled_dot_product_attention
    from ..kernels import block_sparse_fused_attention, fused_attention
    from ..masks import block_layout, sliding_window

    cq, tq, records = run.cupy_inputs, run.torch_inputs, []
    for causal in (False, True):
        for dtype in ("float32", "float16"):
            q, k, v = cq[dtype]
            fused = partial(fused_attention, q, k, v, is_causal=causal)
            launch = _kernel_launch(q, k, v, is_causal=causal)
            records.append(run.measure("fused_attention", dtype, fused, "cupy", causal, kernel=launch))
            if run.N <= NAIVE_MAX_N:
                naive = partial(scaled_dot_product_attention, q, k, v, is_causal=causal)
                records.append(run.measure("naive_cupy", dtype, naive, "cupy", causal))
        tq16 = tq["float16"]
        for impl in ("torch_sdpa_flash", "torch_sdpa_cudnn", "torch_sdpa_efficient"):
            sdpa = _torch_sdpa(impl)
            records.append(run.measure(impl, "float16", partial(sdpa, *tq16, causal), "torch", causal))
    if not with_window:
        return records
    window = sliding_window(WINDOW)
    layout = block_layout(window, 64, run.N, run.N)
    for dtype in ("float32", "float16"):
        q, k, v = cq[dtype]
        sparse = partial(block_sparse_fused_attention, q, k, v, layout, 64, window)
        launch = _kernel_launch(q, k, v, layout=layout, mask=window)
        records.append(run.measure("block_sparse_fused_attention", dtype, sparse, "cupy", window=WINDOW, kernel=launch))
    if run.N < FLEX_MIN_N:
        return records
    try:  # FlexAttention is compiled (Triton) once per size
        flex = _flex_sliding_window(run.N, WINDOW)
    except Exception as err:
        run.log(f"flex_attention could not be set up: {type(err).__name__}: {err}")
        return records
    records.append(run.measure("flex_attention", "float16", partial(flex, *tq["float16"]), "torch", window=WINDOW))
    return records


def measure_all(quick: bool = False, log=print) -> list[dict]:
    """Every record of the suite (needs CuPy on a usable GPU, and torch with CUDA)."""
    import cupy
    import torch

    props = cupy.cuda.runtime.getDeviceProperties(0)
    device = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    versions = _versions()
    log(f"device: {device}; " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    records = []
    for N in QUICK_SIZES if quick else SIZES:
        for d in HEAD_DIMS[:1] if quick else HEAD_DIMS:
            run = _Runner(max(1, TOKENS // N), HEADS, N, d, device, versions, log)
            records += _measure_size(run, with_window=d == 64)
            del run  # free this size's inputs before the next
            cupy.get_default_memory_pool().free_all_blocks()
            torch.cuda.empty_cache()
    return records


# --------------------------------------------------------------------------- goals, files, pictures (no GPU needed)


def _find(records, **fields):
    for r in records:
        if all(r.get(k) == v for k, v in fields.items()) and r.get("ms") is not None and not r.get("error"):
            return r
    return None


def goals(records: list[dict]) -> list[dict]:
    """performance.md's GPU goals, each with its measured value (None where a record is missing)."""
    N_dense, N_window = 4096, 16384
    fp32 = _find(records, impl="fused_attention", dtype="float32", N=N_dense, d=64, causal=False)
    fp16 = _find(records, impl="fused_attention", dtype="float16", N=N_dense, d=64, causal=False)
    flash = _find(records, impl="torch_sdpa_flash", N=N_dense, d=64, causal=False)
    sparse = _find(records, impl="block_sparse_fused_attention", dtype="float16", N=N_window, d=64)
    flash_long = _find(records, impl="torch_sdpa_flash", N=N_window, d=64, causal=False)
    fused_long = [
        r for r in records if r["impl"] in ("fused_attention", "block_sparse_fused_attention") and r["N"] == N_window
    ]

    def goal(name, value, relation, bound, unit):
        met = None if value is None else (value >= bound if relation == ">=" else value <= bound)
        return {"goal": name, "value": value, "relation": relation, "bound": bound, "unit": unit, "met": met}

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
    return [
        goal("fused_attention fp32, N=4096 d=64", fp32 and fp32["tflops"], ">=", 25.0, "TFLOP/s"),
        goal(
            "fused_attention fp16 / torch SDPA flash throughput, N=4096 d=64",
            fp16 and flash and fp16["tflops"] / flash["tflops"],
            ">=",
            1 / 3,
            "ratio",
        ),
        goal(
            f"torch flash dense / block_sparse_fused_attention fp16, window {WINDOW}, N={N_window} d=64 (time)",
            sparse and flash_long and flash_long["ms"] / sparse["ms"],
            ">=",
            10.0,
            "ratio",
        ),
        goal(
            f"pool memory our kernels take beyond their output at N={N_window} / the (N, N) scores it would need",
            None if extra_mib is None else extra_mib / square_mib,
            "<=",
            0.01,
            "ratio",
        ),
    ]


def format_goals(goal_list: list[dict]) -> list[str]:
    lines = []
    for g in goal_list:
        value = "not measured" if g["value"] is None else f"{g['value']:.3g} {g['unit']}"
        verdict = "not measured" if g["met"] is None else ("met" if g["met"] else "NOT met")
        lines.append(f"{g['goal']}: {value} (goal {g['relation']} {g['bound']:.3g}) {verdict}")
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
    series = {}
    for r in records:
        if r["d"] != d or r["causal"] != causal or r["window"] != window or r["ms"] is None or r.get("error"):
            continue
        if impls is not None and r["impl"] not in impls:
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
    records = measure_all(quick=quick, log=log)
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
