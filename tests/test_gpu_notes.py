"""benchmarks/gpu_notes.md quotes only figures that its stored records and plain formulas give.

Each row of the notes' figures table is recomputed here from
``benchmarks/results/nvidia-h200.json`` (work 4 B H N^2 d, bytes of q, k, v and
out, ratios of the records' times) and must equal the printed value to the
digits printed; a row this file does not know fails, so no figure goes unchecked.
"""

import json
import re

import pytest

from attn_course.bench.gpu import RESULTS_DIR, attention_flops

NOTES = RESULTS_DIR.parent / "gpu_notes.md"
RECORDS = json.loads((RESULTS_DIR / "nvidia-h200.json").read_text())
B, H, N, D = 4, 16, 4096, 64  # the shape the notes' two numbers are about
FP32_PEAK, FP16_PEAK, HBM = 67e12, 790e12, 4.8e12  # datasheet leads the notes name
WORK = attention_flops(B, H, N, D, causal=False)
ARRAY = B * H * N * D * 4  # one float32 (B, H, N, d) array, bytes


def record(impl, dtype="float16", n=N, d=D, causal=False, window=None):
    (found,) = [
        r
        for r in RECORDS
        if (r["impl"], r["dtype"], r["N"], r["d"], r["causal"], r["window"]) == (impl, dtype, n, d, causal, window)
    ]
    return found


def tflops(r):
    return attention_flops(r["B"], r["H"], r["N"], r["d"], r["causal"]) / (r["ms"] * 1e-3) / 1e12


def d128_ratios():
    return [
        record("torch_sdpa_flash", n=n, d=128, causal=c)["ms"] / record("fused_attention", n=n, d=128, causal=c)["ms"]
        for n in (4096, 16384)
        for c in (False, True)
    ]


def host_times():
    return [r["ms"] - r["kernel_ms"] for r in RECORDS if r["impl"] == "fused_attention" and r["dtype"] == "float16"]


WINDOW = {"n": 16384, "window": 256}
FIGURES = {  # the notes' row name -> (value, unit it is printed in)
    "work, B4 H16 N4096 d64, full": (WORK / 1e9, "GFLOP"),
    "time floor at 67 TFLOP/s": (WORK / FP32_PEAK * 1e3, "ms"),
    "time floor at 790 TFLOP/s": (WORK / FP16_PEAK * 1e3, "ms"),
    "one float32 array (B, H, N, d)": (ARRAY / 1e6, "MB"),
    "q, k, v, out in float32": (4 * ARRAY / 1e6, "MB"),
    "byte floor at 4.8 TB/s": (4 * ARRAY / HBM * 1e3, "ms"),
    "K and V re-read per 64-query block, float32": (B * H * (N // 64) * 2 * N * D * 4 / 1e9, "GB"),
    "fused float32, N4096 d64 full": (tflops(record("fused_attention", "float32")), "TFLOP/s"),
    "fused float32, share of 67 TFLOP/s": (100 * tflops(record("fused_attention", "float32")) / 67, "%"),
    "fused float32 time / time floor at 67 TFLOP/s": (
        record("fused_attention", "float32")["ms"] / (WORK / FP32_PEAK * 1e3),
        "",
    ),
    "fused float16, N4096 d64 full": (tflops(record("fused_attention")), "TFLOP/s"),
    "torch flash, N4096 d64 full": (tflops(record("torch_sdpa_flash")), "TFLOP/s"),
    "torch cuDNN, N4096 d64 full": (tflops(record("torch_sdpa_cudnn")), "TFLOP/s"),
    "fused float16 / flash, N4096 d64 full": (record("torch_sdpa_flash")["ms"] / record("fused_attention")["ms"], ""),
    "fused float16 kernel alone / flash, N4096 d64 full": (
        record("torch_sdpa_flash")["ms"] / record("fused_attention")["kernel_ms"],
        "",
    ),
    "fused float16 / cuDNN, N4096 d64 full": (record("torch_sdpa_cudnn")["ms"] / record("fused_attention")["ms"], ""),
    "fused float16 / flash, d128, smallest of N4096-16384, causal or not": (min(d128_ratios()), ""),
    "fused float16 / flash, d128, largest of N4096-16384, causal or not": (max(d128_ratios()), ""),
    "fused float16 host time per call, smallest (ms - kernel_ms)": (min(host_times()), "ms"),
    "fused float16 host time per call, largest (ms - kernel_ms)": (max(host_times()), "ms"),
    "block-sparse float16, w256 N16384 d64": (record("block_sparse_fused_attention", **WINDOW)["ms"], "ms"),
    "block-sparse float16 kernel alone, w256 N16384 d64": (
        record("block_sparse_fused_attention", **WINDOW)["kernel_ms"],
        "ms",
    ),
    "FlexAttention, w256 N16384 d64": (record("flex_attention", **WINDOW)["ms"], "ms"),
    "dense flash / block-sparse float16, N16384 d64": (
        record("torch_sdpa_flash", n=16384)["ms"] / record("block_sparse_fused_attention", **WINDOW)["ms"],
        "",
    ),
    "FlexAttention / block-sparse float16, end to end": (
        record("flex_attention", **WINDOW)["ms"] / record("block_sparse_fused_attention", **WINDOW)["ms"],
        "",
    ),
    "FlexAttention end to end / block-sparse kernel alone": (
        record("flex_attention", **WINDOW)["ms"] / record("block_sparse_fused_attention", **WINDOW)["kernel_ms"],
        "",
    ),
}


def table_rows():
    rows = []
    for line in NOTES.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 3 and cells[0] not in ("figure", "---"):
            rows.append((cells[0], cells[1]))
    return rows


def test_the_notes_have_a_figures_table_and_every_row_is_known():
    rows = table_rows()
    assert len(rows) >= 20
    assert [name for name, _ in rows if name not in FIGURES] == []
    assert sorted(name for name, _ in rows) == sorted(FIGURES)


@pytest.mark.parametrize("name, printed", table_rows(), ids=[name for name, _ in table_rows()])
def test_each_figure_is_what_the_records_and_formulas_give(name, printed):
    value, unit = FIGURES[name]
    match = re.fullmatch(r"(-?\d+(?:\.(\d+))?)\s*(.*)", printed)
    assert match, f"{name}: cannot read {printed!r}"
    number, decimals, printed_unit = float(match[1]), len(match[2] or ""), match[3]
    assert printed_unit == unit, f"{name}: printed in {printed_unit!r}, computed in {unit!r}"
    assert number == round(value, decimals), f"{name}: the notes say {printed}, the records give {value:.4g} {unit}"


def test_the_prose_quotes_the_work_of_the_shape_it_names():
    text = NOTES.read_text()
    assert "Work: 274.9 GFLOP" in text and f"{WORK / 1e9:.1f}" == "274.9"
