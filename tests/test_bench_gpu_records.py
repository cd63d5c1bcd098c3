"""The GPU benchmark's timing, records and goals, run on any machine with fake implementations and a fake clock.

A fake device keeps one clock in milliseconds. A fake implementation's call
spends its host time and then its device time on that clock; a busy-wait queued
before it (what kernel-only timing does) hides the host time, as on a real GPU,
where the host finishes launching while the device is still busy.
"""

import json
import math

import numpy as np
import pytest

from attn_course import scaled_dot_product_attention
from attn_course.bench import gpu


class FakeDevice:
    def __init__(self):
        self.clock = 0.0  # ms
        self.hidden = False  # a busy-wait is queued: the next call's host time does not show
        self.busy_waits = []

    def host_clock(self):  # seconds, as time.perf_counter
        return self.clock / 1e3


class FakeEvent:
    def __init__(self, device):
        self.device = device

    def record(self):
        self.at = self.device.clock

    def synchronize(self):
        self.device.hidden = False

    def elapsed_from(self, start):
        return self.at - start.at


class FakeTimer:
    def __init__(self, device):
        self.device = device

    def event(self):
        return FakeEvent(self.device)

    def synchronize(self):
        pass

    def busy_wait(self, ms):
        self.device.busy_waits.append(ms)
        self.device.hidden = True


def fake_call(device, host_ms, device_ms, result=None):
    """A call that spends ``host_ms`` on the host, then ``device_ms`` on the device (a number, or one per call)."""
    durations = iter(device_ms) if isinstance(device_ms, list) else None

    def call():
        device.clock += (0.0 if device.hidden else host_ms) + (next(durations) if durations else device_ms)
        return result

    return call


def fake_implementation(device, impl, host_ms, device_ms, *, dtype="float16", causal=False, window=None, **extra):
    call = fake_call(device, host_ms, device_ms)
    return gpu.Implementation(
        impl, dtype, call, call, FakeTimer(device), lambda out: 1e-4, causal, window, peak_mib=lambda fn: 2.0, **extra
    )


CONTEXT = {"device": "Test Card 9000", "versions": {"torch": "x", "cupy": "y", "triton": None}, "commit": "abc123"}


def shape_of(N, d):
    return {"B": gpu.TOKENS // N, "H": gpu.HEADS, "N": N, "d": d}


# ---- timing ---------------------------------------------------------------------------------------------


def test_time_rounds_gives_three_medians_and_hides_the_host_only_when_asked():
    device = FakeDevice()
    # 3 warm-up calls, then 3 rounds of 5: each round's median is its middle value
    call = fake_call(device, 0.0, [9.0] * 3 + [1, 2, 3, 4, 5] + [2, 2, 9, 2, 2] + [6, 5, 4, 3, 7])
    timed = gpu.time_rounds(call, FakeTimer(device), warmup=3, repeats=5, rounds=3, host_clock=device.host_clock)
    assert timed == {"rounds": [3.0, 2.0, 5.0], "busy_wait_ms": None} and device.busy_waits == []

    device = FakeDevice()
    call = fake_call(device, host_ms=0.3, device_ms=1.0)
    end_to_end = gpu.time_rounds(call, FakeTimer(device), warmup=2, repeats=4, rounds=3, host_clock=device.host_clock)
    assert end_to_end["rounds"] == pytest.approx([1.3] * 3)
    kernel = gpu.time_rounds(
        call, FakeTimer(device), hide_host=True, warmup=2, repeats=4, rounds=3, host_clock=device.host_clock
    )
    assert kernel["rounds"] == pytest.approx([1.0] * 3)
    # the busy-wait is twice the host time of one (unhidden) call plus 0.2 ms, within BUSY_WAIT_MS
    assert kernel["busy_wait_ms"] == pytest.approx(2 * 1.3 + 0.2) and len(device.busy_waits) == 12

    slow_host = FakeDevice()
    call = fake_call(slow_host, host_ms=40.0, device_ms=1.0)
    kernel = gpu.time_rounds(call, FakeTimer(slow_host), hide_host=True, repeats=2, host_clock=slow_host.host_clock)
    assert kernel["busy_wait_ms"] == gpu.BUSY_WAIT_MS[1]


def test_spread_of_three_rounds():
    summary = gpu.spread([2.0, 2.5, 1.5], "ms")
    assert summary == {
        "ms": 2.0,
        "ms_min": 1.5,
        "ms_max": 2.5,
        "ms_repeats": [2.0, 2.5, 1.5],
        "ms_spread": pytest.approx(0.5),
    }
    assert gpu.spread(None, "kernel_ms")["kernel_ms"] is None


# ---- records --------------------------------------------------------------------------------------------


def test_a_record_holds_both_times_their_spread_and_what_performance_md_asks_for():
    record = gpu.build_record(
        impl="fused_attention",
        dtype="float16",
        **shape_of(4096, 64),
        causal=True,
        window=None,
        ms_rounds=[1.2, 1.0, 1.1],
        kernel_rounds=[0.8, 0.9, 0.8],
        busy_wait_ms=0.6,
        rel_error=3e-4,
        peak_mib=32.0,
        first_call_s=2.5,
        **CONTEXT,
        date="2026-12-01T00:00:00+00:00",
    )
    required = "impl dtype B H N d causal window ms kernel_ms tflops device versions date".split()
    assert all(field in record for field in required)
    assert record["ms"] == 1.1 and record["ms_min"] == 1.0 and record["ms_max"] == 1.2
    assert record["kernel_ms"] == 0.8 and record["kernel_ms_repeats"] == [0.8, 0.9, 0.8]
    assert record["ms_spread"] == pytest.approx(0.2 / 1.1)
    causal_flops = 4 * 4 * 16 * 4096**2 * 64 / 2  # 4 B H N^2 d, halved
    assert record["tflops"] == pytest.approx(causal_flops / 1.1e-3 / 1e12)
    assert record["kernel_tflops"] == pytest.approx(causal_flops / 0.8e-3 / 1e12)
    assert record["commit"] == "abc123" and record["versions"]["triton"] is None
    assert record["direction"] == "forward" and record["error"] is None

    backward = gpu.build_record(
        impl="torch_sdpa_flash_backward",
        dtype="float16",
        **shape_of(4096, 64),
        causal=False,
        window=None,
        direction="backward",
        ms_rounds=[2.0] * 3,
        kernel_rounds=[2.0] * 3,
        **CONTEXT,
        date="d",
    )
    assert backward["tflops"] == pytest.approx(2.5 * 4 * 4 * 16 * 4096**2 * 64 / 2e-3 / 1e12)
    window = gpu.build_record(
        impl="flex_attention", dtype="float16", **shape_of(16384, 64), causal=False, window=256, ms_rounds=[0.2] * 3,
        **CONTEXT, date="d",
    )  # fmt: skip
    assert window["tflops"] is None and window["kernel_ms"] is None  # sparse patterns are compared by time


def test_measure_checks_then_times_both_ways_and_never_stops_on_a_failure():
    device = FakeDevice()
    rng = np.random.default_rng(4)
    q, k, v = (rng.standard_normal((2, 5, 4)) for _ in range(3))
    reference = scaled_dot_product_attention(q, k, v)  # float64

    def relative_error(out):
        return float(np.linalg.norm(out - reference) / np.linalg.norm(reference))

    right = fake_call(
        device, 0.25, 1.0, result=scaled_dot_product_attention(*(x.astype(np.float32) for x in (q, k, v)))
    )
    wrong = fake_call(device, 0.25, 1.0, result=scaled_dot_product_attention(q, k, v, is_causal=True))
    timer, logged = FakeTimer(device), []
    options = {"warmup": 1, "repeats": 3, "rounds": 3, "host_clock": device.host_clock, "log": logged.append}

    good = gpu.Implementation("fused_attention", "float32", right, right, timer, relative_error)
    record = gpu.measure(good, {"B": 1, "H": 2, "N": 5, "d": 4}, **CONTEXT, **options)
    assert record["error"] is None and 0 < record["rel_error"] < 1e-5
    assert record["ms"] == pytest.approx(1.25) and record["kernel_ms"] == pytest.approx(1.0)
    assert len(record["ms_repeats"]) == 3 and record["first_call_s"] == round(1.25e-3, 3)
    assert "fused_attention" in logged[-1] and "FAILED" not in logged[-1]

    bad = gpu.Implementation("forgets_causal", "float32", wrong, wrong, timer, relative_error)
    record = gpu.measure(bad, {"B": 1, "H": 2, "N": 5, "d": 4}, **CONTEXT, **options)
    assert record["error"].startswith("relative error") and record["rel_error"] > 1e-2
    assert "FAILED: relative error" in logged[-1]

    def no_kernel():
        raise RuntimeError("No available kernel. Aborting execution.\nmore detail")

    broken = gpu.Implementation("torch_sdpa_cudnn", "float16", no_kernel, no_kernel, timer, relative_error)
    record = gpu.measure(broken, {"B": 1, "H": 2, "N": 5, "d": 4}, **CONTEXT, **options)
    assert record["error"] == "RuntimeError: No available kernel. Aborting execution."
    assert record["ms"] is None and record["kernel_ms"] is None and record["tflops"] is None


# ---- a whole run with fakes: records, goals, files ---------------------------------------------------------

# device ms per (impl, N, d, causal) at N = 4096; host ms per call. Ours is as fast as flash on the device at
# d = 64 but pays more host time, so its end-to-end parity fails where its kernel-only parity passes.
HOST_MS = {
    "fused_attention": 0.12,
    "torch_sdpa_flash": 0.03,
    "torch_sdpa_cudnn": 0.03,
    "block_sparse_fused_attention": 0.1,
}
HOST_MS |= {"flex_attention": 0.02, "fused_attention_backward": 0.05, "torch_sdpa_flash_backward": 0.04}


# device ms of the windowed calls: ours (native window) beats Flex on the device, not end to end (host time)
WINDOW_MS = {"fused_attention": 0.15, "block_sparse_fused_attention": 0.2, "flex_attention": 0.23}


def device_ms(impl, N, d, causal):
    per_flash = {"fused_attention": 1.0 if d == 64 else 1.6, "torch_sdpa_flash": 1.0, "torch_sdpa_cudnn": 0.6}
    per_flash |= {"fused_attention_backward": 4.0, "torch_sdpa_flash_backward": 2.0}  # ours at 0.5x: fails
    ms = per_flash[impl] * (N / 4096) ** 2
    return ms / 2 if causal else ms


def fake_run(device, with_backward=True):
    records, options = (
        [],
        {"warmup": 1, "repeats": 3, "rounds": 3, "host_clock": device.host_clock, "log": lambda line: None},
    )
    for N in gpu.GOAL_SIZES:
        for d in gpu.HEAD_DIMS:
            implementations = []
            if d == 64:  # first, so that a dense goal that forgot to ask for window=None would read these
                for impl, ms in WINDOW_MS.items():
                    implementations.append(fake_implementation(device, impl, HOST_MS[impl], ms, window=gpu.WINDOW))
            for causal in (False, True):
                for impl in ("fused_attention", "torch_sdpa_flash", "torch_sdpa_cudnn"):
                    ms = device_ms(impl, N, d, causal)
                    implementations.append(fake_implementation(device, impl, HOST_MS[impl], ms, causal=causal))
                for impl in ("torch_sdpa_flash_backward", "fused_attention_backward")[: 2 if with_backward else 1]:
                    ms = device_ms(impl, N, d, causal)
                    implementations.append(
                        fake_implementation(device, impl, HOST_MS[impl], ms, causal=causal, direction="backward")
                    )
            records += [gpu.measure(it, shape_of(N, d), **CONTEXT, **options) for it in implementations]
    return records


def by_name(goal_list):
    return {g["goal"]: g for g in goal_list}


def test_goals_of_a_whole_fake_run_with_their_records(tmp_path):
    records = fake_run(FakeDevice())
    assert all(r["error"] is None for r in records)
    goal_list = gpu.goals(records)
    goal = by_name(goal_list)

    kernel = goal["parity: torch flash / fused_attention fp16 time, d=64 N=4096 full, kernel only"]
    assert kernel["value"] == pytest.approx(1.0) and kernel["met"] is True and kernel["bound"] == 1.0
    e2e = goal["parity: torch flash / fused_attention fp16 time, d=64 N=4096 full, end to end"]
    assert e2e["value"] == pytest.approx((1.0 + 0.03) / (1.0 + 0.12)) and e2e["met"] is False
    cited = {r["impl"]: r for r in e2e["records"]}
    assert set(cited) == {"torch_sdpa_flash", "fused_attention"}
    for citation in e2e["records"]:  # each citation points at its record in <card>.json
        assert records[citation["index"]]["impl"] == citation["impl"] and records[citation["index"]]["N"] == 4096
        assert citation["ms"] == records[citation["index"]]["ms"]
    slow = goal["parity: torch flash / fused_attention fp16 time, d=128 N=16384 causal, kernel only"]
    assert slow["value"] == pytest.approx(1.0 / 1.6) and slow["met"] is False

    stretch = goal["stretch: torch cuDNN / fused_attention fp16 time, d=128 N=4096 full, kernel only"]
    assert stretch["stretch"] is True and stretch["value"] == pytest.approx(0.6 / 1.6) and stretch["met"] is False
    assert not any(name.startswith("stretch") and "d=64" in name for name in goal)  # cuDNN's goal is at d = 128

    window = "window: flex_attention / fused_attention(window=256) fp16 time, d=64 N=16384 full, "
    e2e_window, kernel_window = goal[window + "end to end"], goal[window + "kernel only"]
    assert e2e_window["value"] == pytest.approx((0.23 + 0.02) / (0.15 + 0.12)) and e2e_window["met"] is False
    assert kernel_window["value"] == pytest.approx(0.23 / 0.15) and kernel_window["met"] is True
    assert kernel_window["bound"] == e2e_window["bound"] == 1.2
    assert {(r["impl"], r["window"]) for r in e2e_window["records"]} == {
        ("flex_attention", 256),
        ("fused_attention", 256),
    }
    # the dense goals read dense records only, though the windowed fused_attention records come first
    for g in goal_list:
        if not g["goal"].startswith("window"):
            assert all(r["window"] is None for r in g["records"] if r["impl"] != "block_sparse_fused_attention"), g
    sparse = goal["torch flash dense / block_sparse_fused_attention fp16, window 256, N=16384 d=64 (time)"]
    assert {(r["impl"], r["window"]) for r in sparse["records"]} == {
        ("block_sparse_fused_attention", 256),
        ("torch_sdpa_flash", None),
    }
    assert sparse["value"] == pytest.approx((1.0 * 16 + 0.03) / (0.2 + 0.1))

    backward = goal[
        "backward: torch flash backward / fused_attention_backward fp16 time, d=64 N=4096 causal, kernel only"
    ]
    assert backward["value"] == pytest.approx(0.5) and backward["met"] is False and backward["bound"] == 0.6
    assert {r["direction"] for r in backward["records"]} == {"backward"}

    parity = [g for g in goal_list if g["goal"].startswith("parity")]
    assert len(parity) == 16  # d 64 and 128 x N 4k and 16k x causal or not x kernel only or end to end
    assert len([g for g in goal_list if g["goal"].startswith("backward")]) == 16

    results, goals_path = gpu.write_results(records, goal_list, tmp_path)
    assert gpu.load_results(results) == records
    assert json.loads(goals_path.read_text()) == goal_list
    summary = gpu.format_summary(goal_list)
    assert "parity: torch flash / fused_attention fp16 time (goal >= 1x)" in summary
    row = next(line for line in summary if line.strip().startswith("d=64 kernel only"))
    assert row.split()[3:5] == ["1.00", "ok"]  # the first column: N=4096 full
    assert gpu.print_summary(tmp_path, log=lambda line: None) == 0


def test_backward_goals_without_our_records_say_not_measured():
    records = fake_run(FakeDevice(), with_backward=False)  # a run stopped, or our backward failed its check
    goal_list = gpu.goals(records)
    backward = [g for g in goal_list if g["goal"].startswith("backward")]
    assert backward and all(g["value"] is None and g["met"] is None for g in backward)
    assert all(len(g["records"]) == 1 and g["records"][0]["impl"] == "torch_sdpa_flash_backward" for g in backward)
    assert gpu.format_goals(backward)[0].endswith("not measured")
    summary = gpu.format_summary(goal_list)
    row = next(line for line in summary if line.startswith("backward:"))
    table = summary[summary.index(row) + 2 :][:4]
    assert len(table) == 4 and all(line.split()[-4:] == ["n/a"] * 4 for line in table), table


def test_the_goals_file_of_an_earlier_run_prints_as_lesson_15_shows_it():
    stored = json.loads((gpu.RESULTS_DIR / "nvidia-h200_goals.json").read_text())
    assert gpu.format_goals(stored)[:2] == [
        "fused_attention fp32, N=4096 d=64: 27.5 TFLOP/s (goal >= 25) met",
        "fused_attention fp16 / torch SDPA flash throughput, N=4096 d=64: 0.753 ratio (goal >= 0.333) met",
    ]
    assert gpu.format_summary(stored)  # old goals (no records, no stretch) still summarise


def test_the_plot_reads_forward_records_only():
    records = fake_run(FakeDevice())
    series = gpu._series(records, d=64, causal=False, window=None)
    assert ("fused_attention", "float16") in series and not any("backward" in impl for impl, _ in series)
    assert all(p["tflops"] > 0 and not math.isnan(p["tflops"]) for points in series.values() for p in points)
