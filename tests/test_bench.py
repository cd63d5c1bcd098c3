"""The CPU benchmark suite runs end to end (quick sizes) and writes its files; no timing is asserted."""

import csv

import numpy as np
import pytest

from attn_course import measure
from attn_course.bench import cpu
from attn_course.bench.__main__ import main


def test_quick_cpu_suite_writes_table_csv_and_plot(tmp_path, capsys):
    assert main(["cpu", "--quick", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    for goal in (
        "dense NumPy / torch SDPA time",
        "tiled (block 64) / dense NumPy time",
        "tiled peak memory / dense",
        "causal tile skipping",
        "sliding window w=16: dense-masked / sparse time",
        "linear vs softmax: softmax / linear time",
    ):
        lines = [line for line in printed.splitlines() if goal in line]
        assert lines, f"no line for the goal {goal!r}"
        assert "goal <=" in lines[0] or "goal >=" in lines[0]
        assert lines[0].rstrip().endswith(("met", "NOT met"))
    assert "threads: os.cpu_count()=" in printed and "torch.get_num_threads()=" in printed
    assert "Fitted log-log slopes" in printed
    with (tmp_path / "cpu_benchmarks.csv").open() as file:
        rows = list(csv.DictReader(file))
    sections = {row["section"] for row in rows}
    assert {"dense vs torch", "tiled vs dense", "scaling with N", "linear vs softmax"} <= sections
    assert all(float(row["best_ms"]) > 0 for row in rows if row["best_ms"])
    with (tmp_path / "cpu_goals.csv").open() as file:
        assert len(list(csv.DictReader(file))) >= 6
    png = (tmp_path / "cpu_benchmarks.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_measuring_functions():
    calls = []
    timing = measure.time_attention(calls.append, 1, repeats=3, warmup=2)
    assert len(calls) == 5 and timing.runs == 3 and 0 <= timing.best <= timing.median
    allocated = measure.peak_memory(lambda n: np.ones(n, dtype=np.uint8), 4 * 2**20)
    assert 4 * 2**20 <= allocated < 5 * 2**20
    curve = measure.scaling_curve(lambda x: x @ x.T, [8, 16], lambda n: (np.ones((n, 4)),), repeats=1, memory=True)
    assert [point["N"] for point in curve] == [8, 16] and all(point["peak_bytes"] > 0 for point in curve)
    assert measure.loglog_slope([1, 2, 4, 8], [3, 12, 48, 192]) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        measure.time_attention(print, repeats=0)


def synthetic_gpu_records():
    """Records shaped like the GPU suite's, with made-up timings (this tests the file handling, not a GPU)."""
    from attn_course.bench import gpu

    records = []
    for N in gpu.SIZES:
        for impl, dtype, ms, window in (
            ("fused_attention", "float32", 4.0, None),
            ("fused_attention", "float16", 1.0, None),
            ("torch_sdpa_flash", "float16", 0.5, None),
            ("block_sparse_fused_attention", "float16", 0.1, gpu.WINDOW),
        ):
            B = gpu.TOKENS // N
            flops = gpu.attention_flops(B, gpu.HEADS, N, 64, False)
            records.append({
                "impl": impl, "dtype": dtype, "B": B, "H": gpu.HEADS, "N": N, "d": 64, "causal": False,
                "window": window, "ms": ms * N / 1024, "tflops": None if window else flops / (ms * N / 1024e3) / 1e12,
                "device": "Test Card 9000", "versions": {"torch": "x", "cupy": "y"},
                "date": "2026-11-28T00:00:00+00:00",
                "rel_error": 1e-6, "peak_mib": 1.0, "error": None,
            })  # fmt: skip
    return records


def test_gpu_goals_files_and_plot_from_records(tmp_path):
    from attn_course.bench import gpu

    records = synthetic_gpu_records()
    goal_list = gpu.goals(records)
    by_name = {g["goal"].split(",")[0]: g for g in goal_list}
    fp32 = next(r for r in records if r["impl"] == "fused_attention" and r["dtype"] == "float32" and r["N"] == 4096)
    assert by_name["fused_attention fp32"]["value"] == pytest.approx(fp32["tflops"])
    assert by_name["fused_attention fp16 / torch SDPA flash throughput"]["value"] == pytest.approx(0.5)
    assert by_name["torch flash dense / block_sparse_fused_attention fp16"]["value"] == pytest.approx(5.0)
    assert all(line.endswith(("met", "NOT met", "not measured")) for line in gpu.format_goals(goal_list))
    results, goals_path = gpu.write_results(records, goal_list, tmp_path)
    assert results.name == "test-card-9000.json" and goals_path.exists()
    assert gpu.load_results(results) == records
    fig = gpu.plot_results(records, tmp_path / "plot.png")
    assert "Test Card 9000" in fig._suptitle.get_text()
    assert (tmp_path / "plot.png").read_bytes().startswith(b"\x89PNG")


def test_gpu_suite_without_a_gpu_says_so(capsys):
    from attn_course.backend import gpu_available

    if gpu_available():
        pytest.skip("this machine has a GPU")
    assert main(["gpu", "--quick"]) == 2
    assert "No usable GPU here" in capsys.readouterr().out


def test_load_results_refuses_other_files(tmp_path):
    from attn_course.bench import gpu

    path = tmp_path / "x.json"
    path.write_text("{}")
    with pytest.raises(ValueError, match="benchmark records"):
        gpu.load_results(path)


def test_one_round_takes_the_median_between_events_after_warming_up():
    from attn_course.bench import gpu

    clock, calls, synced = [0.0], [], []

    class FakeEvent:  # "elapsed" = difference of a fake clock that each call advances by its own duration
        def record(self):
            self.at = clock[0]

        def synchronize(self):
            pass

        def elapsed_from(self, start):
            return self.at - start.at

    class FakeTimer:
        event = FakeEvent

        def synchronize(self):
            synced.append(1)

    durations = iter([9.0, 9.0, 5.0, 1.0, 3.0, 2.0, 4.0])  # two warm-up calls, then five timed ones

    def work():
        calls.append(1)
        clock[0] += next(durations)

    timed = gpu.time_rounds(work, FakeTimer(), warmup=2, repeats=5, rounds=1)
    assert timed == {"rounds": [3.0], "busy_wait_ms": None} and len(calls) == 7 and synced == [1]


def test_the_benchmark_refuses_to_time_a_wrong_result():
    from attn_course import linear_attention, masks, scaled_dot_product_attention, sparse_attention, tiled_attention

    rng = np.random.default_rng(3)
    q, k, v = (rng.standard_normal((1, 2, 70, 8), dtype=np.float32) for _ in range(3))
    window, window_mask = masks.sliding_window(5), masks.sliding_window_mask(70, 5)
    # right results pass, with their error against float64 returned
    assert cpu.check_result("dense", "softmax", scaled_dot_product_attention, (q, k, v), {}) < 1e-5
    assert cpu.check_result("tiled", "softmax", tiled_attention, (q, k, v), {"is_causal": True}) < 1e-5
    assert cpu.check_result("masked", "softmax", scaled_dot_product_attention, (q, k, v, window_mask), {}) < 1e-5
    assert cpu.check_result("sparse", "softmax", sparse_attention, (q, k, v, window), {}) < 1e-5
    assert cpu.check_result("linear", "linear", linear_attention, (q, k, v), {"causal": True}) < 1e-5

    # a classic mistake (the causal mask forgotten) and a plain wrong answer are refused
    def forgets_causal(q, k, v, is_causal):
        return scaled_dot_product_attention(q, k, v)

    with pytest.raises(cpu.WrongResultError, match="refusing"):
        cpu.check_result("forgot causal", "softmax", forgets_causal, (q, k, v), {"is_causal": True})
    with pytest.raises(cpu.WrongResultError, match="zeros"):
        cpu.check_result("zeros", "softmax", lambda q, k, v: np.zeros_like(q), (q, k, v), {})
