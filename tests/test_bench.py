"""The CPU benchmark suite runs end to end (quick sizes) and writes its files; no timing is asserted."""

import csv

import numpy as np
import pytest

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
    timing = cpu.time_attention(calls.append, 1, repeats=3, warmup=2)
    assert len(calls) == 5 and timing.runs == 3 and 0 <= timing.best <= timing.median
    allocated = cpu.peak_memory(lambda n: np.ones(n, dtype=np.uint8), 4 * 2**20)
    assert 4 * 2**20 <= allocated < 5 * 2**20
    curve = cpu.scaling_curve(lambda x: x @ x.T, [8, 16], lambda n: (np.ones((n, 4)),), repeats=1, memory=True)
    assert [point["N"] for point in curve] == [8, 16] and all(point["peak_bytes"] > 0 for point in curve)
    assert cpu.loglog_slope([1, 2, 4, 8], [3, 12, 48, 192]) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        cpu.time_attention(print, repeats=0)
